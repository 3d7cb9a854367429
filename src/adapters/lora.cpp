#include "kd/adapters/lora.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <regex>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include "kd/io/archive_file.h"
#include "kd/io/atomic_file.h"
#include "kd/core/error.h"
#include "kd/detail/format.h"
#include "kd/core/name_matcher.h"
#include "kd/core/script_model.h"
#include "kd/nn/linear.h"

namespace kd::lora {
namespace {

constexpr const char* kFormatTag = "kdistill-lora-adapter";
constexpr int64_t kFormatVersion = 1;

}  // namespace

// The real adapter of a kd::nn::Linear site: s·B(A(dropout(x))), inactive once merged.
class LoRAImpl::Adapter : public torch::nn::Module, public kd::nn::LinearAdapter {
 public:
  Adapter(torch::Tensor a, torch::Tensor b, double scale, double dropout, torch::Tensor merged)
      : torch::nn::Module("LoRAAdapter"), scale_(scale), dropout_(dropout), merged_(std::move(merged)) {
    a_ = register_parameter("lora_A", std::move(a));
    b_ = register_parameter("lora_B", std::move(b));
  }
  torch::Tensor forward(const torch::Tensor& x, bool training) override {
    const auto h = training && dropout_ > 0 ? torch::dropout(x, dropout_, /*train=*/true) : x;
    return torch::linear(torch::linear(h, a_), b_) * scale_;
  }
  // Read from the buffer each time: a checkpoint load changes it without calling merge().
  bool active() const override { return merged_.item<int64_t>() == 0; }
  std::string kind() const override { return "lora"; }
  const torch::Tensor& a() const { return a_; }
  const torch::Tensor& b() const { return b_; }

 private:
  double scale_, dropout_;
  torch::Tensor merged_, a_, b_;
};

std::string ParameterReport::to_string() const {
  return fmt::format("trainable {} of {} parameters ({:.2f} %)", detail::with_thousands(trainable), detail::with_thousands(total),
                     100.0 * fraction());
}

LoRAImpl::LoRAImpl(std::shared_ptr<torch::nn::Module> model, Options options) : options_(std::move(options)) {
  if (!model) throw Error(ErrorCategory::kValue, "LoRA: the model is null");
  if (options_.rank() <= 0) throw Error(ErrorCategory::kValue, fmt::format("LoRA: rank must be > 0, got {}", options_.rank()));
  if (!(options_.alpha() > 0)) {
    throw Error(ErrorCategory::kValue, fmt::format("LoRA: alpha must be > 0, got {}", options_.alpha()));
  }
  if (!(options_.dropout() >= 0.0 && options_.dropout() < 1.0)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("LoRA: dropout must be in [0, 1) (a probability), got {}", options_.dropout()));
  }
  if (std::dynamic_pointer_cast<ScriptModel>(model)) {
    throw Error(ErrorCategory::kModel,
                "LoRA: TorchScript models are not supported (their layers are not torch::nn::Linear modules that "
                "LibTorch can re-parametrise); build the student as a C++ module (kd::Model) to use LoRA");
  }
  const NameMatcher wanted(options_.targets(), "LoRA");
  // Registered first: attached adapters read it on every forward.
  merged_ = register_buffer("merged", torch::zeros({}, torch::kInt64));
  std::vector<std::string> linears, plain;
  for (const auto& item : model->named_modules("", /*include_self=*/false)) {
    auto linear = std::dynamic_pointer_cast<torch::nn::LinearImpl>(item.value());
    if (!linear) continue;
    linears.push_back(item.key());
    if (!wanted(item.key())) continue;
    const int64_t out = linear->weight.size(0), in = linear->weight.size(1);
    if (options_.rank() > std::min(in, out)) {
      throw Error(ErrorCategory::kValue, fmt::format("LoRA: rank {} exceeds min(in, out) = {} of Linear '{}' [{}, {}]",
                                                     options_.rank(), std::min(in, out), item.key(), out, in));
    }
    Site site;
    site.name = item.key();
    site.linear = linear;
    site.attached = std::dynamic_pointer_cast<kd::nn::LinearImpl>(linear);
    if (!site.attached) plain.push_back(item.key());
    if (site.attached && site.attached->adapter()) {
      throw Error(ErrorCategory::kState,
                  fmt::format("LoRA: Linear '{}' already has a '{}' adapter attached (kd::lora::apply twice on the "
                              "same model?); detach() it or apply LoRA once",
                              item.key(), site.attached->adapter()->kind()));
    }
    site.base = linear->named_parameters(/*recurse=*/false)["weight"];
    sites_.push_back(std::move(site));
  }
  if (sites_.empty()) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("LoRA: no Linear layer matches targets [{}]; the model's Linear layers are: {}",
                            fmt::join(options_.targets(), ", "),
                            linears.empty() ? "(none)" : fmt::format("{}", fmt::join(linears, ", "))));
  }
  if (options_.dropout() > 0 && !plain.empty()) {
    throw Error(ErrorCategory::kValue,
                fmt::format("LoRA: dropout {} needs each adapter to see its layer's input, but [{}] {} plain "
                            "torch::nn::Linear, which LoRA can only re-parametrise through the weight (W0 + s*B*A); "
                            "declare {} as kd::nn::Linear (kd/nn/linear.h) in the model, or use dropout 0",
                            options_.dropout(), fmt::join(plain, ", "), plain.size() == 1 ? "is a" : "are",
                            plain.size() == 1 ? "it" : "them"));
  }
  // Adapters only once every check has passed: a refused apply() leaves the model as it was.
  for (auto& site : sites_) {
    const int64_t out = site.base.size(0), in = site.base.size(1);
    std::string key = site.name;
    std::replace(key.begin(), key.end(), '.', '_');
    const auto opts = site.base.options().requires_grad(false);
    auto a = torch::empty({options_.rank(), in}, opts);
    torch::nn::init::kaiming_uniform_(a, std::sqrt(5.0));
    auto adapter = register_module(
        key, std::make_shared<Adapter>(a, torch::zeros({out, options_.rank()}, opts), scale(), options_.dropout(), merged_));
    site.a = adapter->a();
    site.b = adapter->b();
    if (site.attached) site.attached->attach(adapter);
  }
  for (auto& p : model->parameters()) p.requires_grad_(false);
  model_ = std::move(model);
}

bool LoRAImpl::merged() const { return merged_.item<int64_t>() != 0; }

double LoRAImpl::scale() const {
  const double r = static_cast<double>(options_.rank());
  return options_.alpha() / (options_.rslora() ? std::sqrt(r) : r);
}

void LoRAImpl::refresh() {
  const double s = scale();
  const bool is_merged = merged();
  for (auto& site : sites_) {
    if (site.attached) continue;  // its forward adds the update itself
    site.linear->weight = is_merged ? site.base : site.base + torch::mm(site.b, site.a) * s;
  }
}

void LoRAImpl::merge() {
  if (merged()) return;
  torch::NoGradGuard no_grad;
  for (auto& site : sites_) {
    site.base.add_(torch::mm(site.b, site.a) * scale());
    if (!site.attached) site.linear->weight = site.base;
  }
  merged_.fill_(1);
}

void LoRAImpl::unmerge() {
  if (!merged()) return;
  {
    torch::NoGradGuard no_grad;
    for (auto& site : sites_) site.base.sub_(torch::mm(site.b, site.a) * scale());
    merged_.fill_(0);
  }
  refresh();
}

std::vector<std::string> LoRAImpl::targets() const {
  std::vector<std::string> out;
  for (const auto& s : sites_) out.push_back(s.name);
  return out;
}

std::vector<std::string> LoRAImpl::attached_targets() const {
  std::vector<std::string> out;
  for (const auto& s : sites_) {
    if (s.attached) out.push_back(s.name);
  }
  return out;
}

bool LoRAImpl::rewrites_weights() const {
  return std::any_of(sites_.begin(), sites_.end(), [](const Site& s) { return !s.attached; });
}

std::vector<int64_t> LoRAImpl::attached_forward_calls() const {
  std::vector<int64_t> out;
  for (const auto& s : sites_) {
    if (s.attached) out.push_back(s.attached->forward_calls());
  }
  return out;
}

std::vector<torch::Tensor> LoRAImpl::base_parameters() const {
  std::vector<torch::Tensor> out;
  for (const auto& s : sites_) {
    out.push_back(s.base);
    if (s.linear->bias.defined()) out.push_back(s.linear->bias);
  }
  return out;
}

ParameterReport LoRAImpl::report() const {
  ParameterReport r;
  for (const auto& p : model_->parameters()) {
    r.total += p.numel();
    if (p.requires_grad()) r.trainable += p.numel();
  }
  for (const auto& p : parameters()) {
    r.total += p.numel();
    if (p.requires_grad()) r.trainable += p.numel();
  }
  return r;
}

void LoRAImpl::save_adapter(const std::string& path) const {
  torch::serialize::OutputArchive archive;
  archive.write("format", c10::IValue(std::string(kFormatTag)));
  archive.write("version", c10::IValue(kFormatVersion));
  archive.write("rank", c10::IValue(options_.rank()));
  archive.write("alpha", c10::IValue(options_.alpha()));
  archive.write("rslora", c10::IValue(options_.rslora()));
  c10::List<std::string> names;
  for (size_t i = 0; i < sites_.size(); ++i) {
    names.push_back(sites_[i].name);
    archive.write(fmt::format("A.{}", i), sites_[i].a.detach().cpu());
    archive.write(fmt::format("B.{}", i), sites_[i].b.detach().cpu());
  }
  archive.write("sites", c10::IValue(names));
  save_archive_atomically(archive, path);
}

void LoRAImpl::load_adapter(const std::string& path) {
  if (!std::filesystem::exists(path)) {
    throw Error(ErrorCategory::kFile, fmt::format("LoRA adapter file '{}' does not exist", path));
  }
  torch::serialize::InputArchive archive;
  c10::IValue format, rank, alpha, rslora, sites;
  if (auto damage = find_archive_damage(path)) {
    throw Error(ErrorCategory::kFormat, fmt::format("'{}' is not a usable LoRA adapter file: {}", path, *damage));
  }
  try {
    archive.load_from(path);
  } catch (const std::exception&) {  // c10::Error, or torch::jit::ErrorReport from a damaged archive
    throw Error(ErrorCategory::kFormat, fmt::format("'{}' is not a LoRA adapter file (it could not be read as a "
                                                    "LibTorch archive; is it truncated?)",
                                                    path));
  }
  if (!archive.try_read("format", format) || !format.isString() || format.toStringRef() != kFormatTag ||
      !archive.try_read("rank", rank) || !archive.try_read("alpha", alpha) || !archive.try_read("rslora", rslora) ||
      !archive.try_read("sites", sites)) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("'{}' is a LibTorch archive but not a kdistill LoRA adapter (written by save_adapter)", path));
  }
  const auto names = sites.toList();
  std::vector<std::string> saved;
  for (const auto& n : names) saved.push_back(n.get().toStringRef());
  if (saved != targets()) {
    throw Error(ErrorCategory::kShape, fmt::format("LoRA adapter '{}' has sites [{}] but this model's adapters are [{}]",
                                                   path, fmt::join(saved, ", "), fmt::join(targets(), ", ")));
  }
  if (rank.toInt() != options_.rank()) {
    throw Error(ErrorCategory::kShape, fmt::format("LoRA adapter '{}' has rank {} but this LoRA has rank {}; apply "
                                                   "with Options().rank({})",
                                                   path, rank.toInt(), options_.rank(), rank.toInt()));
  }
  if (alpha.toDouble() != options_.alpha() || rslora.toBool() != options_.rslora()) {
    throw Error(ErrorCategory::kValue,
                fmt::format("LoRA adapter '{}' was trained with alpha {} rslora {}, this LoRA has alpha {} rslora {}",
                            path, alpha.toDouble(), rslora.toBool(), options_.alpha(), options_.rslora()));
  }
  // Read and check everything before touching the model, so a bad file changes nothing.
  std::vector<std::pair<torch::Tensor, torch::Tensor>> loaded;  // (file, destination)
  for (size_t i = 0; i < sites_.size(); ++i) {
    for (auto [key, dst] : {std::pair{fmt::format("A.{}", i), sites_[i].a}, std::pair{fmt::format("B.{}", i), sites_[i].b}}) {
      torch::Tensor t;
      if (!archive.try_read(key, t)) {
        throw Error(ErrorCategory::kFormat, fmt::format("LoRA adapter '{}' lacks tensor '{}'", path, key));
      }
      if (t.sizes() != dst.sizes()) {
        throw Error(ErrorCategory::kShape,
                    fmt::format("LoRA adapter '{}': {} of site '{}' is [{}] in the file but [{}] here", path,
                                key.substr(0, 1), sites_[i].name, fmt::join(t.sizes(), ", "), fmt::join(dst.sizes(), ", ")));
      }
      loaded.emplace_back(t, dst);
    }
  }
  const bool was_merged = merged();
  unmerge();  // the loaded update replaces the old one inside W0 too
  {
    torch::NoGradGuard no_grad;
    for (auto& [t, dst] : loaded) dst.copy_(t);
  }
  if (was_merged) merge();
  else refresh();
}

LoRA apply(std::shared_ptr<torch::nn::Module> model, Options options) {
  return LoRA(std::move(model), std::move(options));
}

}  // namespace kd::lora
