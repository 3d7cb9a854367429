#include "kd/quant/int8_export.h"

#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/detail/format.h"
#include "kd/core/model_output.h"
#include "kd/nn/linear.h"
#include "kd/quant/int8_file.h"

namespace kd::qat {
namespace {

// The `weight` member of a quantizable layer, or nullptr.
torch::Tensor* weight_member(const std::shared_ptr<torch::nn::Module>& m) {
  if (auto p = std::dynamic_pointer_cast<torch::nn::LinearImpl>(m)) return &p->weight;
  if (auto p = std::dynamic_pointer_cast<torch::nn::Conv1dImpl>(m)) return &p->weight;
  if (auto p = std::dynamic_pointer_cast<torch::nn::Conv2dImpl>(m)) return &p->weight;
  if (auto p = std::dynamic_pointer_cast<torch::nn::Conv3dImpl>(m)) return &p->weight;
  return nullptr;
}

// Shape that broadcasts per-channel values along `axis` of a tensor of `dims` dimensions.
std::vector<int64_t> channel_shape(int64_t channels, int64_t axis, int64_t dims) {
  std::vector<int64_t> shape(dims, 1);
  if (axis >= 0) shape[axis] = channels;
  return shape;
}

int64_t float32_bytes(const torch::nn::Module& model) {
  int64_t bytes = 0;
  for (const auto& p : model.parameters()) {
    if (p.is_floating_point()) bytes += 4 * p.numel();
  }
  for (const auto& b : model.buffers()) {
    if (b.is_floating_point()) bytes += 4 * b.numel();
  }
  return bytes;
}

// Names of the buffers of every FakeQuantize in `model` (their state travels as activation sites, or not at all).
std::set<std::string> quantizer_buffer_names(const torch::nn::Module& model) {
  std::set<std::string> names;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (!std::dynamic_pointer_cast<FakeQuantizeImpl>(item.value())) continue;
    for (const auto& b : item.value()->named_buffers(/*recurse=*/false)) names.insert(item.key() + "." + b.key());
  }
  return names;
}

// The model's parameters and buffers by name (parameters first), without the quantizers' buffers.
std::map<std::string, torch::Tensor> state_of(const torch::nn::Module& model) {
  const auto skip = quantizer_buffer_names(model);
  std::map<std::string, torch::Tensor> state;
  for (const auto& p : model.named_parameters(/*recurse=*/true)) state.emplace(p.key(), p.value());
  for (const auto& b : model.named_buffers(/*recurse=*/true)) {
    if (!skip.count(b.key())) state.emplace(b.key(), b.value());
  }
  return state;
}

}  // namespace

std::string Int8Report::to_string() const {
  return fmt::format("int8 file {} bytes = {:.2f} × float32 state {} bytes ({} int8 weight{}, {} values; {} activation "
                     "point{}; {} float tensor{})",
                     detail::with_thousands(file_bytes), ratio(), detail::with_thousands(float32_bytes), weight_sites,
                     weight_sites == 1 ? "" : "s", detail::with_thousands(int8_values), activation_sites,
                     activation_sites == 1 ? "" : "s", float_tensors, float_tensors == 1 ? "" : "s");
}

Int8Report export_int8(torch::nn::Module& model, QATImpl& qat, const std::string& path) {
  if (qat.model().get() != &model) {
    throw Error(ErrorCategory::kValue, fmt::format("export_int8 '{}': the QAT object was prepared on another model; "
                                                   "pass the model given to kd::qat::prepare()",
                                                   path));
  }
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    auto layer = std::dynamic_pointer_cast<kd::nn::LinearImpl>(item.value());
    if (layer && layer->adapter() && layer->adapter()->active()) {
      throw Error(ErrorCategory::kState,
                  fmt::format("export_int8 '{}': layer '{}' has an active '{}' adapter, which the int8 file would not "
                              "hold; merge it into the weights first (kd::lora::LoRA::merge(), or lora::HookOptions "
                              "merge_at_end)",
                              path, item.key(), layer->adapter()->kind()));
    }
  }
  torch::NoGradGuard no_grad;
  Int8Report report;
  std::vector<Int8Record> records;

  std::set<std::string> quantized;  // parameter names stored as int8
  for (const auto& site : qat.weight_sites()) {
    const auto& fq = site.quantizer;
    const auto& o = fq->options();
    if (!fq->observed()) {
      throw Error(ErrorCategory::kState,
                  fmt::format("export_int8 '{}': the weight quantizer of '{}' has never observed its weight, so it "
                              "has no scale; call qat->refresh() (observers on) at least once before exporting",
                              path, site.name));
    }
    const auto w = site.weight.detach();
    const int64_t axis = o.per_channel() ? (o.ch_axis() < 0 ? o.ch_axis() + w.dim() : o.ch_axis()) : -1;
    const auto scale = fq->scale.detach().to(torch::kCPU, torch::kFloat).clone();
    const auto zero_point = fq->zero_point.detach().to(torch::kCPU, torch::kInt).clone();
    // The integers of the fake-quantized forward itself: fq(W0) = (q - z)·s exactly, so q - z = round(fq / s).
    const auto fq_w = functional::fake_quantize(w, fq->scale, fq->zero_point, o.quant_min(), o.quant_max(),
                                                axis >= 0 ? std::optional<int64_t>(axis) : std::nullopt)
                          .to(torch::kCPU, torch::kDouble);
    const auto bshape = channel_shape(scale.numel(), axis, w.dim());
    const auto q = torch::round(fq_w / scale.to(torch::kDouble).view(bshape)) + zero_point.to(torch::kDouble).view(bshape);
    torch::ScalarType qtype;
    if (o.quant_min() >= -128 && o.quant_max() <= 127) {
      qtype = torch::kInt8;
    } else if (o.quant_min() >= 0 && o.quant_max() <= 255) {
      qtype = torch::kUInt8;
    } else {
      throw Error(ErrorCategory::kValue, fmt::format("export_int8 '{}': weight '{}' uses the range [{}, {}], which "
                                                     "does not fit 8 bits",
                                                     path, site.name, o.quant_min(), o.quant_max()));
    }
    Int8Record r;
    r.kind = Int8Record::Kind::kWeight;
    r.name = site.name;
    r.values = q.to(qtype).contiguous();
    r.scale = scale;
    r.zero_point = zero_point;
    r.quant_min = o.quant_min();
    r.quant_max = o.quant_max();
    r.axis = axis;
    r.symmetric = o.symmetric();
    records.push_back(std::move(r));
    quantized.insert(site.name + ".weight");
    report.int8_values += q.numel();
    ++report.weight_sites;
  }

  for (const auto& site : qat.activation_sites()) {
    const auto& fq = site.quantizer;
    const auto& o = fq->options();
    if (!fq->observed()) {
      spdlog::warn("export_int8 '{}': activation point '{}' has observed no data; it is written with scale 1 and "
                   "zero point 0 (run forward passes with observers on before exporting)",
                   path, site.name);
    }
    Int8Record r;
    r.kind = Int8Record::Kind::kActivation;
    r.name = site.name;
    r.scale = fq->scale.detach().to(torch::kCPU, torch::kFloat).clone();
    r.zero_point = fq->zero_point.detach().to(torch::kCPU, torch::kInt).clone();
    r.quant_min = o.quant_min();
    r.quant_max = o.quant_max();
    r.axis = o.per_channel() ? o.ch_axis() : int64_t{-1};
    r.symmetric = o.symmetric();
    records.push_back(std::move(r));
    ++report.activation_sites;
  }

  for (const auto& [name, t] : state_of(model)) {
    if (quantized.count(name)) continue;
    auto value = t.detach().to(torch::kCPU);
    Int8Record r;
    r.kind = Int8Record::Kind::kTensor;
    r.name = name;
    r.values = (value.is_floating_point() ? value.to(torch::kFloat) : value).contiguous();
    records.push_back(std::move(r));
    ++report.float_tensors;
  }

  write_int8_file(path, records);
  report.file_bytes = static_cast<int64_t>(std::filesystem::file_size(path));
  report.float32_bytes = float32_bytes(model);
  return report;
}

Int8Report load_int8(torch::nn::Module& model, const std::string& path) {
  const auto records = read_int8_file(path);  // the whole file is checked here

  std::map<std::string, std::shared_ptr<torch::nn::Module>> modules;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) modules.emplace(item.key(), item.value());
  auto state = state_of(model);
  const auto mismatch = [&](const std::string& name, const torch::Tensor& file, const torch::Tensor& here) {
    return Error(ErrorCategory::kShape, fmt::format("int8 file '{}': tensor '{}' is {} in the file but {} in the model; "
                                                    "load it into a model of the architecture it was exported from",
                                                    path, name, shape_string(file), shape_string(here)));
  };
  const auto missing_here = [&](const std::string& what) {
    return Error(ErrorCategory::kShape, fmt::format("int8 file '{}' has {} but the model does not; load it into a model "
                                                    "of the architecture it was exported from",
                                                    path, what));
  };

  // Check everything against the model first, so a file that does not fit changes nothing.
  struct WeightLoad {
    torch::Tensor* member;
    torch::Tensor param, dequantized;
  };
  struct ActivationLoad {
    FakeQuantize quantizer;
    FakeQuantizeOptions options;
    torch::Tensor scale, zero_point;
  };
  std::vector<WeightLoad> weights;
  std::vector<ActivationLoad> activations;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> floats;  // (file, destination)
  std::set<std::string> covered;
  Int8Report report;
  for (const auto& r : records) {
    switch (r.kind) {
      case Int8Record::Kind::kWeight: {
        const auto& q = r.values;
        const auto it = modules.find(r.name);
        torch::Tensor* member = it == modules.end() ? nullptr : weight_member(it->second);
        if (!member) {
          throw missing_here(fmt::format("an int8 Linear/Conv layer '{}' [{}]", r.name, fmt::join(q.sizes(), ", ")));
        }
        const std::string param_name = r.name + ".weight";
        auto param = it->second->named_parameters(/*recurse=*/false)["weight"];
        if (q.sizes() != param.sizes()) throw mismatch(param_name, q, param);
        const auto dt = param.scalar_type();
        const auto bshape = channel_shape(r.scale.numel(), r.axis, q.dim());
        // (q - z)·s in the weight's dtype: bit-equal to ATen's fake-quantized weight.
        const auto dequantized = (q.to(dt) - r.zero_point.to(dt).view(bshape)) * r.scale.to(dt).view(bshape);
        weights.push_back({member, param, dequantized.to(param.device())});
        covered.insert(param_name);
        report.int8_values += q.numel();
        break;
      }
      case Int8Record::Kind::kActivation: {
        const auto it = modules.find(r.name);
        auto fq = it == modules.end() ? nullptr : std::dynamic_pointer_cast<FakeQuantizeImpl>(it->second);
        if (!fq) throw missing_here(fmt::format("an activation point '{}' (a kd::qat::FakeQuantize)", r.name));
        auto options = FakeQuantizeOptions()
                           .quant_min(r.quant_min)
                           .quant_max(r.quant_max)
                           .symmetric(r.symmetric)
                           .per_channel(r.axis >= 0)
                           .ch_axis(r.axis >= 0 ? r.axis : 0);
        try {
          FakeQuantizeImpl check(options);  // validates the grid
        } catch (const Error& e) {
          throw Error(ErrorCategory::kFormat,
                      fmt::format("int8 file '{}': activation point '{}': {}", path, r.name, e.message()));
        }
        activations.push_back({FakeQuantize(fq), options, r.scale, r.zero_point});
        break;
      }
      case Int8Record::Kind::kTensor: {
        const auto it = state.find(r.name);
        if (it == state.end() || covered.count(r.name)) {
          throw missing_here(fmt::format("tensor '{}' {}", r.name, shape_string(r.values)));
        }
        if (r.values.sizes() != it->second.sizes()) throw mismatch(r.name, r.values, it->second);
        floats.emplace_back(r.values, it->second);
        covered.insert(r.name);
        break;
      }
    }
  }
  report.weight_sites = static_cast<int64_t>(weights.size());
  report.activation_sites = static_cast<int64_t>(activations.size());
  report.float_tensors = static_cast<int64_t>(floats.size());
  for (const auto& [name, t] : state) {
    if (!covered.count(name)) {
      throw Error(ErrorCategory::kShape,
                  fmt::format("int8 file '{}' lacks the model's tensor '{}' {}; load it into a model of the "
                              "architecture it was exported from",
                              path, name, shape_string(t)));
    }
  }

  {
    torch::NoGradGuard no_grad;
    for (auto& w : weights) {
      w.param.copy_(w.dequantized);
      *w.member = w.param;  // an ordinary float layer again, even if the model was under QAT
    }
    for (auto& [file, dst] : floats) dst.copy_(file);
  }
  for (auto& a : activations) {
    a.quantizer->configure(a.options);
    a.quantizer->set_qparams(a.scale, a.zero_point);
    a.quantizer->enable_observer(false);
    a.quantizer->enable_fake_quant(true);
  }
  report.file_bytes = static_cast<int64_t>(std::filesystem::file_size(path));
  report.float32_bytes = float32_bytes(model);
  return report;
}

}  // namespace kd::qat
