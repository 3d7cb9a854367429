#include "kd/quant/qat.h"

#include <algorithm>
#include <regex>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/script_model.h"

namespace kd::qat {
namespace {

// The layer type and its `weight` member, for the layers QAT re-parametrises.
struct WeightLayer {
  const char* type = nullptr;
  torch::Tensor* weight = nullptr;
};

WeightLayer weight_layer(const std::shared_ptr<torch::nn::Module>& m) {
  if (auto p = std::dynamic_pointer_cast<torch::nn::LinearImpl>(m)) return {"Linear", &p->weight};
  if (auto p = std::dynamic_pointer_cast<torch::nn::Conv1dImpl>(m)) return {"Conv1d", &p->weight};
  if (auto p = std::dynamic_pointer_cast<torch::nn::Conv2dImpl>(m)) return {"Conv2d", &p->weight};
  if (auto p = std::dynamic_pointer_cast<torch::nn::Conv3dImpl>(m)) return {"Conv3d", &p->weight};
  return {};
}

struct Excluder {
  std::vector<std::regex> regexes;
  explicit Excluder(const std::vector<std::string>& patterns) {
    for (const auto& p : patterns) {
      try {
        regexes.emplace_back(p, std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        throw Error(ErrorCategory::kConfig,
                    fmt::format("QAT: exclude pattern '{}' is not a valid ECMAScript regex: {}", p, e.what()));
      }
    }
  }
  bool operator()(const std::string& name) const {
    return std::any_of(regexes.begin(), regexes.end(), [&](const std::regex& re) { return std::regex_search(name, re); });
  }
};

}  // namespace

FakeQuantizeOptions Options::weight_options() const {
  return FakeQuantizeOptions::weight_int8(per_channel(), narrow_range())
      .observer(weight_observer())
      .averaging_constant(averaging_constant());
}

FakeQuantizeOptions Options::activation_options() const {
  return FakeQuantizeOptions::activation_uint8().observer(activation_observer()).averaging_constant(averaging_constant());
}

QATImpl::QATImpl(std::shared_ptr<torch::nn::Module> model, Options options) : options_(std::move(options)) {
  if (!model) throw Error(ErrorCategory::kValue, "QAT: the model is null");
  if (options_.bits() != 8) {
    throw Error(ErrorCategory::kValue,
                fmt::format("QAT: {}-bit quantization is not supported; only bits(8) (int8 weights, uint8 "
                            "activations) is",
                            options_.bits()));
  }
  if (!(options_.averaging_constant() > 0.0 && options_.averaging_constant() <= 1.0)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("QAT: averaging_constant must be in (0, 1], got {}", options_.averaging_constant()));
  }
  if (std::dynamic_pointer_cast<ScriptModel>(model)) {
    throw Error(ErrorCategory::kModel,
                "QAT: TorchScript models are not supported (their layers are not torch::nn::Linear/Conv modules that "
                "LibTorch can re-parametrise); build the student as a C++ module (kd::Model) to use QAT");
  }
  const Excluder excluded(options_.exclude());
  const auto weight_options = options_.weight_options();
  const auto activation_options = options_.activation_options();
  std::vector<std::string> seen;
  bool any_placeholder = false;
  for (const auto& item : model->named_modules("", /*include_self=*/false)) {
    const std::string& name = item.key();
    const auto& module = item.value();
    if (auto fq = std::dynamic_pointer_cast<FakeQuantizeImpl>(module)) {
      any_placeholder = true;
      const bool skip = !options_.activations() || excluded(name);
      sites_.push_back({name, SiteKind::kActivation, "FakeQuantize", skip});
      if (skip) continue;
      FakeQuantize holder(fq);
      holder->configure(activation_options);
      holder->enable_fake_quant(true);
      holder->enable_observer(true);
      activations_.push_back({name, holder});
      continue;
    }
    const WeightLayer layer = weight_layer(module);
    if (!layer.type) {
      if (module->children().empty()) {
        std::string type = module->name();  // "torch::nn::ReLUImpl" -> "torch::nn::ReLU"
        if (type.size() > 4 && type.compare(type.size() - 4, 4, "Impl") == 0) type.resize(type.size() - 4);
        seen.push_back(fmt::format("{} ({})", name, type));
      }
      continue;
    }
    seen.push_back(fmt::format("{} ({})", name, layer.type));
    const bool skip = excluded(name);
    sites_.push_back({name, SiteKind::kWeight, layer.type, skip});
    if (skip) continue;
    torch::Tensor w0 = module->named_parameters(/*recurse=*/false)["weight"];
    std::string key = name;
    std::replace(key.begin(), key.end(), '.', '_');
    FakeQuantize fq(weight_options);
    fq->to(w0.device());
    register_module(key, fq);
    weights_.push_back({name, layer.type, w0, fq});
    members_.push_back(layer.weight);
    layers_.push_back(module);
  }
  if (weights_.empty()) {
    const bool any_layer = std::any_of(sites_.begin(), sites_.end(), [](const SiteInfo& s) { return s.kind == SiteKind::kWeight; });
    throw Error(ErrorCategory::kConfig,
                any_layer ? fmt::format("QAT: every Linear/Conv layer matches exclude [{}], nothing is left to "
                                        "quantize; the model's layers are: {}",
                                        fmt::join(options_.exclude(), ", "), fmt::join(seen, ", "))
                          : fmt::format("QAT: the model has no torch::nn::Linear/Conv1d/Conv2d/Conv3d layer to "
                                        "quantize; its layers are: {}",
                                        seen.empty() ? "(none)" : fmt::format("{}", fmt::join(seen, ", "))));
  }
  if (options_.activations() && !any_placeholder) {
    spdlog::warn("QAT: activations stay float: the model declares no quantization points (default-constructed "
                 "kd::qat::FakeQuantize submodules called in its forward); only the weights are fake-quantized");
  }
  model_ = std::move(model);
}

void QATImpl::refresh() {
  for (size_t i = 0; i < weights_.size(); ++i) {
    auto& site = weights_[i];
    auto& fq = site.quantizer;
    if (fq->scale.device() != site.weight.device()) fq->to(site.weight.device());
    if (!fq->observer_enabled() && fq->fake_quant_enabled() && !fq->observed()) {
      // Frozen before it ever saw W0: observe it once, rather than quantize with torch's default scale 1.
      fq->enable_observer(true);
      *members_[i] = fq->forward(site.weight);
      fq->enable_observer(false);
      continue;
    }
    *members_[i] = fq->forward(site.weight);
  }
}

void QATImpl::enable_fake_quant(bool enabled) {
  for (auto& s : weights_) s.quantizer->enable_fake_quant(enabled);
  for (auto& s : activations_) s.quantizer->enable_fake_quant(enabled);
}

void QATImpl::enable_observers(bool enabled) {
  for (auto& s : weights_) s.quantizer->enable_observer(enabled);
  for (auto& s : activations_) s.quantizer->enable_observer(enabled);
}

void QATImpl::freeze_observers() { enable_observers(false); }

bool QATImpl::observers_enabled() const {
  return std::any_of(weights_.begin(), weights_.end(), [](const WeightSite& s) { return s.quantizer->observer_enabled(); }) ||
         std::any_of(activations_.begin(), activations_.end(),
                     [](const ActivationSite& s) { return s.quantizer->observer_enabled(); });
}

void QATImpl::restore() {
  enable_fake_quant(false);
  enable_observers(false);
  for (size_t i = 0; i < weights_.size(); ++i) *members_[i] = weights_[i].weight;
}

std::vector<SiteInfo> QATImpl::sites() const { return sites_; }

std::string QATImpl::summary() const {
  std::vector<std::string> floats;
  for (const auto& s : sites_) {
    if (s.excluded) floats.push_back(s.name);
  }
  const auto w = options_.weight_options();
  return fmt::format("QAT int8: {} weight site{} ({}, [{}, {}]), {} activation point{}; float: {}", weights_.size(),
                     weights_.size() == 1 ? "" : "s", w.per_channel() ? "per-channel" : "per-tensor", w.quant_min(),
                     w.quant_max(), activations_.size(), activations_.size() == 1 ? "" : "s",
                     floats.empty() ? "none" : fmt::format("{}", fmt::join(floats, ", ")));
}

QAT prepare(std::shared_ptr<torch::nn::Module> model, Options options) {
  return QAT(std::move(model), std::move(options));
}

}  // namespace kd::qat
