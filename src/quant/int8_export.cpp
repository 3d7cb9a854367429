#include "kd/quant/int8_export.h"

#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "kd/core/atomic_file.h"
#include "kd/core/error.h"
#include "kd/core/format.h"
#include "kd/core/model_output.h"

namespace kd::qat {
namespace {

constexpr const char* kFormatTag = "kdistill-int8";
constexpr int64_t kFormatVersion = 1;

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
                     with_thousands(file_bytes), ratio(), with_thousands(float32_bytes), weight_sites,
                     weight_sites == 1 ? "" : "s", with_thousands(int8_values), activation_sites,
                     activation_sites == 1 ? "" : "s", float_tensors, float_tensors == 1 ? "" : "s");
}

Int8Report export_int8(torch::nn::Module& model, QATImpl& qat, const std::string& path) {
  if (qat.model().get() != &model) {
    throw Error(ErrorCategory::kValue, fmt::format("export_int8 '{}': the QAT object was prepared on another model; "
                                                   "pass the model given to kd::qat::prepare()",
                                                   path));
  }
  torch::NoGradGuard no_grad;
  Int8Report report;
  torch::serialize::OutputArchive archive;
  archive.write("format", c10::IValue(std::string(kFormatTag)));
  archive.write("version", c10::IValue(kFormatVersion));

  std::set<std::string> quantized;  // parameter names stored as int8
  c10::List<std::string> weight_names;
  for (size_t i = 0; i < qat.weight_sites().size(); ++i) {
    const auto& site = qat.weight_sites()[i];
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
    const std::string key = fmt::format("weight.{}.", i);
    archive.write(key + "q", q.to(qtype).contiguous());
    archive.write(key + "scale", scale);
    archive.write(key + "zero_point", zero_point);
    archive.write(key + "quant_min", c10::IValue(o.quant_min()));
    archive.write(key + "quant_max", c10::IValue(o.quant_max()));
    archive.write(key + "axis", c10::IValue(axis));
    weight_names.push_back(site.name);
    quantized.insert(site.name + ".weight");
    report.int8_values += q.numel();
  }
  archive.write("weight.names", c10::IValue(weight_names));
  report.weight_sites = static_cast<int64_t>(weight_names.size());

  c10::List<std::string> activation_names;
  for (size_t i = 0; i < qat.activation_sites().size(); ++i) {
    const auto& site = qat.activation_sites()[i];
    const auto& fq = site.quantizer;
    const auto& o = fq->options();
    if (!fq->observed()) {
      spdlog::warn("export_int8 '{}': activation point '{}' has observed no data; it is written with scale 1 and "
                   "zero point 0 (run forward passes with observers on before exporting)",
                   path, site.name);
    }
    const std::string key = fmt::format("activation.{}.", i);
    archive.write(key + "scale", fq->scale.detach().to(torch::kCPU, torch::kFloat).clone());
    archive.write(key + "zero_point", fq->zero_point.detach().to(torch::kCPU, torch::kInt).clone());
    archive.write(key + "quant_min", c10::IValue(o.quant_min()));
    archive.write(key + "quant_max", c10::IValue(o.quant_max()));
    archive.write(key + "symmetric", c10::IValue(o.symmetric()));
    archive.write(key + "axis", c10::IValue(o.per_channel() ? o.ch_axis() : int64_t{-1}));
    activation_names.push_back(site.name);
  }
  archive.write("activation.names", c10::IValue(activation_names));
  report.activation_sites = static_cast<int64_t>(activation_names.size());

  c10::List<std::string> float_names;
  for (const auto& [name, t] : state_of(model)) {
    if (quantized.count(name)) continue;
    auto value = t.detach().to(torch::kCPU);
    value = (value.is_floating_point() ? value.to(torch::kFloat) : value).clone();
    archive.write(fmt::format("float.{}", float_names.size()), value);
    float_names.push_back(name);
  }
  archive.write("float.names", c10::IValue(float_names));
  report.float_tensors = static_cast<int64_t>(float_names.size());

  write_atomically(path, [&](const std::string& tmp) { archive.save_to(tmp); });
  report.file_bytes = static_cast<int64_t>(std::filesystem::file_size(path));
  report.float32_bytes = float32_bytes(model);
  return report;
}

Int8Report load_int8(torch::nn::Module& model, const std::string& path) {
  if (!std::filesystem::exists(path)) {
    throw Error(ErrorCategory::kFile, fmt::format("int8 file '{}' does not exist", path));
  }
  const auto not_ours = [&](const std::string& why) {
    return Error(ErrorCategory::kFormat,
                 fmt::format("'{}' is not an int8 file written by kd::qat::export_int8 ({})", path, why));
  };
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const std::exception&) {
    throw not_ours("it could not be read as a LibTorch archive; is it truncated or corrupt?");
  }
  const auto read_value = [&](const std::string& key) {
    c10::IValue v;
    bool found = false;
    try {
      found = archive.try_read(key, v);
    } catch (const std::exception&) {
    }
    if (!found) throw not_ours(fmt::format("entry '{}' is missing", key));
    return v;
  };
  const auto read_int = [&](const std::string& key) {
    const auto v = read_value(key);
    if (!v.isInt()) throw not_ours(fmt::format("entry '{}' is not an integer", key));
    return v.toInt();
  };
  const auto read_tensor = [&](const std::string& key) {
    const auto v = read_value(key);
    if (!v.isTensor()) throw not_ours(fmt::format("entry '{}' is not a tensor", key));
    return v.toTensor();
  };
  const auto read_names = [&](const std::string& key) {
    const auto v = read_value(key);
    std::vector<std::string> names;
    if (!v.isList()) throw not_ours(fmt::format("entry '{}' is not a list of names", key));
    const auto list = v.toList();
    for (size_t i = 0; i < list.size(); ++i) {
      const c10::IValue n = list.get(i);
      if (!n.isString()) throw not_ours(fmt::format("entry '{}' is not a list of names", key));
      names.push_back(n.toStringRef());
    }
    return names;
  };
  {
    c10::IValue format;
    bool found = false;
    try {
      found = archive.try_read("format", format);
    } catch (const std::exception&) {
    }
    if (!found || !format.isString() || format.toStringRef() != kFormatTag) {
      throw not_ours("it is a LibTorch archive without the 'kdistill-int8' tag");
    }
  }
  const int64_t version = read_int("version");
  if (version != kFormatVersion) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("int8 file '{}' has format version {}; this kdistill reads version {} (export it again "
                            "with this version)",
                            path, version, kFormatVersion));
  }

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

  // Read and check everything first, so a file that does not fit changes nothing.
  struct WeightLoad {
    torch::Tensor* member;
    torch::Tensor param, dequantized;
  };
  std::vector<WeightLoad> weights;
  std::set<std::string> covered;
  Int8Report report;
  const auto weight_names = read_names("weight.names");
  for (size_t i = 0; i < weight_names.size(); ++i) {
    const auto& name = weight_names[i];
    const std::string key = fmt::format("weight.{}.", i);
    const auto q = read_tensor(key + "q");
    const auto scale = read_tensor(key + "scale").to(torch::kFloat).reshape({-1});
    const auto zero_point = read_tensor(key + "zero_point").to(torch::kInt).reshape({-1});
    const int64_t axis = read_int(key + "axis");
    read_int(key + "quant_min");
    read_int(key + "quant_max");
    const auto it = modules.find(name);
    torch::Tensor* member = it == modules.end() ? nullptr : weight_member(it->second);
    if (!member) {
      throw missing_here(fmt::format("an int8 Linear/Conv layer '{}' [{}]", name, fmt::join(q.sizes(), ", ")));
    }
    const std::string param_name = name + ".weight";
    auto param = it->second->named_parameters(/*recurse=*/false)["weight"];
    if (q.sizes() != param.sizes()) throw mismatch(param_name, q, param);
    const int64_t channels = axis >= 0 ? (axis < q.dim() ? q.size(axis) : -1) : 1;
    if (channels < 0 || scale.numel() != channels || zero_point.numel() != channels) {
      throw not_ours(fmt::format("the scales of '{}' ({}) do not fit its int8 weight {} along axis {}", name,
                                 scale.numel(), shape_string(q), axis));
    }
    const auto dt = param.scalar_type();
    const auto bshape = channel_shape(channels, axis, q.dim());
    // (q - z)·s in the weight's dtype: bit-equal to ATen's fake-quantized weight.
    const auto dequantized = (q.to(dt) - zero_point.to(dt).view(bshape)) * scale.to(dt).view(bshape);
    weights.push_back({member, param, dequantized});
    covered.insert(param_name);
    report.int8_values += q.numel();
  }
  report.weight_sites = static_cast<int64_t>(weights.size());

  struct ActivationLoad {
    FakeQuantize quantizer;
    FakeQuantizeOptions options;
    torch::Tensor scale, zero_point;
  };
  std::vector<ActivationLoad> activations;
  const auto activation_names = read_names("activation.names");
  for (size_t i = 0; i < activation_names.size(); ++i) {
    const auto& name = activation_names[i];
    const std::string key = fmt::format("activation.{}.", i);
    const auto scale = read_tensor(key + "scale");
    const auto zero_point = read_tensor(key + "zero_point");
    const int64_t qmin = read_int(key + "quant_min"), qmax = read_int(key + "quant_max"), axis = read_int(key + "axis");
    const auto symmetric = read_value(key + "symmetric");
    if (!symmetric.isBool()) throw not_ours(fmt::format("entry '{}symmetric' is not a bool", key));
    const auto it = modules.find(name);
    auto fq = it == modules.end() ? nullptr : std::dynamic_pointer_cast<FakeQuantizeImpl>(it->second);
    if (!fq) throw missing_here(fmt::format("an activation point '{}' (a kd::qat::FakeQuantize)", name));
    auto options = FakeQuantizeOptions()
                       .quant_min(qmin)
                       .quant_max(qmax)
                       .symmetric(symmetric.toBool())
                       .per_channel(axis >= 0)
                       .ch_axis(axis >= 0 ? axis : 0);
    try {
      FakeQuantizeImpl check(options);  // validates the range
    } catch (const Error& e) {
      throw not_ours(fmt::format("activation point '{}': {}", name, e.message()));
    }
    if (scale.dim() != 1 || scale.sizes() != zero_point.sizes() || (axis < 0 && scale.numel() != 1)) {
      throw not_ours(fmt::format("activation point '{}' has scale {} and zero point {}", name, shape_string(scale),
                                 shape_string(zero_point)));
    }
    activations.push_back({FakeQuantize(fq), options, scale, zero_point});
  }
  report.activation_sites = static_cast<int64_t>(activations.size());

  std::vector<std::pair<torch::Tensor, torch::Tensor>> floats;  // (file, destination)
  const auto float_names = read_names("float.names");
  for (size_t i = 0; i < float_names.size(); ++i) {
    const auto& name = float_names[i];
    const auto t = read_tensor(fmt::format("float.{}", i));
    const auto it = state.find(name);
    if (it == state.end() || covered.count(name)) throw missing_here(fmt::format("tensor '{}' {}", name, shape_string(t)));
    if (t.sizes() != it->second.sizes()) throw mismatch(name, t, it->second);
    floats.emplace_back(t, it->second);
    covered.insert(name);
  }
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
