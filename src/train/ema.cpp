#include "kd/train/ema.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/model_output.h"

namespace kd {
namespace {

void check_same(const std::vector<std::string>& expected, const torch::OrderedDict<std::string, torch::Tensor>& got,
                const char* what) {
  bool same = expected.size() == got.size();
  for (size_t i = 0; same && i < expected.size(); ++i) same = expected[i] == got[i].key();
  if (!same) {
    throw Error(ErrorCategory::kState,
                fmt::format("Ema: the model's {} ({}) differ from the ones the EMA was made from ({}); "
                            "use the same model structure",
                            what, got.size(), expected.size()));
  }
}

}  // namespace

Ema::Ema(const torch::nn::Module& model, double decay, bool warmup) : decay_(decay), warmup_(warmup) {
  if (!(decay >= 0.0 && decay < 1.0)) {
    throw Error(ErrorCategory::kValue, fmt::format("Ema decay must be in [0, 1), got {}", decay));
  }
  torch::NoGradGuard no_grad;
  for (const auto& p : model.named_parameters()) {
    names_.push_back(p.key());
    shadow_.push_back(p.value().detach().clone());
  }
  for (const auto& b : model.named_buffers()) {
    buffer_names_.push_back(b.key());
    buffers_.push_back(b.value().detach().clone());
  }
}

double Ema::next_decay() const {
  const double n = static_cast<double>(updates_ + 1);
  return warmup_ ? std::min(decay_, (1.0 + n) / (10.0 + n)) : decay_;
}

void Ema::update(const torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  const auto params = model.named_parameters();
  const auto buffers = model.named_buffers();
  check_same(names_, params, "parameters");
  check_same(buffer_names_, buffers, "buffers");
  const double d = next_decay();
  for (size_t i = 0; i < shadow_.size(); ++i) {
    const auto& p = params[i].value();
    if (p.sizes() != shadow_[i].sizes()) {
      throw Error(ErrorCategory::kShape, fmt::format("Ema: parameter '{}' is {} but its shadow is {}", names_[i],
                                                     shape_string(p), shape_string(shadow_[i])));
    }
    shadow_[i].mul_(d).add_(p.detach().to(shadow_[i].device()), 1.0 - d);
  }
  for (size_t i = 0; i < buffers_.size(); ++i) buffers_[i].copy_(buffers[i].value());
  ++updates_;
}

void Ema::copy_to(torch::nn::Module& model) const {
  torch::NoGradGuard no_grad;
  auto params = model.named_parameters();
  auto buffers = model.named_buffers();
  check_same(names_, params, "parameters");
  check_same(buffer_names_, buffers, "buffers");
  for (size_t i = 0; i < shadow_.size(); ++i) params[i].value().copy_(shadow_[i]);
  for (size_t i = 0; i < buffers_.size(); ++i) buffers[i].value().copy_(buffers_[i]);
}

void Ema::save(torch::serialize::OutputArchive& archive) const {
  archive.write("updates", torch::tensor({updates_}, torch::kInt64));
  for (size_t i = 0; i < shadow_.size(); ++i) archive.write("p." + names_[i], shadow_[i]);
  for (size_t i = 0; i < buffers_.size(); ++i) archive.write("b." + buffer_names_[i], buffers_[i]);
}

void Ema::load(torch::serialize::InputArchive& archive) {
  torch::NoGradGuard no_grad;
  torch::Tensor updates;
  archive.read("updates", updates);
  updates_ = updates.item<int64_t>();
  for (size_t i = 0; i < shadow_.size(); ++i) {
    torch::Tensor t;
    archive.read("p." + names_[i], t);
    shadow_[i].copy_(t);
  }
  for (size_t i = 0; i < buffers_.size(); ++i) {
    torch::Tensor t;
    archive.read("b." + buffer_names_[i], t);
    buffers_[i].copy_(t);
  }
}

}  // namespace kd
