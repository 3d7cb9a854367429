#include "kd/prune/pruning.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/name_matcher.h"
#include "kd/models/attention.h"
#include "kd/models/linear_attention.h"

namespace kd::prune {

// One pruned unit group and how its unit mask spreads over the tensors it covers.
struct PruningImpl::Site {
  std::string name;
  Granularity kind;
  int64_t heads = 0;                  // kHead
  std::vector<torch::Tensor> rows;    // tensors whose dim 0 follows the units (weights, biases; q/k/v for heads)
  std::vector<torch::Tensor> cols;    // kHead: o_proj.weight, whose dim 1 follows the heads
  torch::Tensor mask;                 // unstructured: the weight's shape; channel: [C_out]; head: [H]
  std::vector<std::pair<torch::Tensor, unsigned>> hooks;

  // The mask as it multiplies `t` (one of rows / cols).
  torch::Tensor spread(const torch::Tensor& t, bool column) const {
    if (kind == Granularity::kUnstructured) return t.dim() == mask.dim() ? mask : torch::ones_like(t);
    auto m = mask;
    const int64_t n = column ? t.size(1) : t.size(0);
    if (kind == Granularity::kHead) m = m.repeat_interleave(n / heads);
    std::vector<int64_t> shape(t.dim(), 1);
    shape[column ? 1 : 0] = n;
    return m.view(shape);
  }

  // Squared L2 norm of each unit over every covered tensor (|w|² per weight when unstructured).
  torch::Tensor scores() const {
    if (kind == Granularity::kUnstructured) return rows.front().detach().abs();
    torch::Tensor s = torch::zeros({mask.size(0)}, mask.options());
    auto add = [&](const torch::Tensor& t, bool column) {
      auto sq = t.detach().to(torch::kFloat32).pow(2);
      sq = column ? sq.transpose(0, 1) : sq;
      auto per_row = sq.reshape({sq.size(0), -1}).sum(1);
      if (kind == Granularity::kHead) per_row = per_row.view({heads, -1}).sum(1);
      s += per_row;
    };
    for (const auto& t : rows) add(t, false);
    for (const auto& t : cols) add(t, true);
    return s;
  }
};

namespace {

std::string buffer_name(const std::string& name) {
  std::string s = name;
  std::replace(s.begin(), s.end(), '.', '_');
  return s.empty() ? std::string("model") : s;
}

bool is_weight_layer(torch::nn::Module& m) {
  return dynamic_cast<torch::nn::LinearImpl*>(&m) || dynamic_cast<torch::nn::Conv1dImpl*>(&m) ||
         dynamic_cast<torch::nn::Conv2dImpl*>(&m) || dynamic_cast<torch::nn::Conv3dImpl*>(&m);
}

// q/k/v/o projections and head count of an attention module, or nullopt.
struct Attention {
  kd::nn::Linear q, k, v, o;
  int64_t heads;
};
std::optional<Attention> attention_of(torch::nn::Module& m) {
  if (auto* a = dynamic_cast<models::MultiHeadSelfAttentionImpl*>(&m)) {
    return Attention{a->q_proj, a->k_proj, a->v_proj, a->o_proj, a->options.heads()};
  }
  if (auto* a = dynamic_cast<models::LinearSelfAttentionImpl*>(&m)) {
    return Attention{a->q_proj, a->k_proj, a->v_proj, a->o_proj, a->options.heads()};
  }
  return std::nullopt;
}

}  // namespace

PruningImpl::PruningImpl(std::shared_ptr<torch::nn::Module> model, Options options)
    : options_(std::move(options)), model_(std::move(model)) {
  if (!model_) throw Error(ErrorCategory::kValue, "pruning: the model is null");
  const NameMatcher wanted(options_.targets(), "pruning");
  const NameMatcher excluded(options_.exclude(), "pruning exclude");
  const bool heads = options_.granularity() == Granularity::kHead;
  std::vector<std::string> seen;
  for (const auto& item : model_->named_modules("", /*include_self=*/true)) {
    const auto& name = item.key();
    auto& m = *item.value();
    const std::optional<Attention> attn = heads ? attention_of(m) : std::nullopt;
    if (heads ? !attn : !is_weight_layer(m)) continue;
    seen.push_back(name);
    if (!wanted(name) || (!excluded.empty() && excluded(name))) continue;
    auto site = std::make_shared<Site>();
    site->name = name;
    site->kind = options_.granularity();
    if (heads) {
      site->heads = attn->heads;
      for (auto* l : {&attn->q, &attn->k, &attn->v}) {
        site->rows.push_back((*l)->weight);
        if ((*l)->bias.defined()) site->rows.push_back((*l)->bias);
      }
      site->cols.push_back(attn->o->weight);
      site->mask = torch::ones({attn->heads});
    } else {
      const auto own = m.named_parameters(/*recurse=*/false);  // find() points into this dictionary
      const auto weight = own["weight"];
      site->rows.push_back(weight);
      if (options_.granularity() == Granularity::kChannel) {
        if (const auto* b = own.find("bias"); b && b->defined()) site->rows.push_back(*b);
        site->mask = torch::ones({weight.size(0)});
      } else {
        site->mask = torch::ones(weight.sizes());
      }
    }
    site->mask = register_buffer("mask_" + buffer_name(name), site->mask.to(site->rows.front().device()));
    sites_.push_back(site);
  }
  if (sites_.empty()) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("pruning ({}): no {} matches targets [{}] without exclude [{}]; the model's are: {}",
                            kGranularityNames.name(options_.granularity()), heads ? "attention module" : "Linear/Conv layer",
                            fmt::join(options_.targets(), ", "), fmt::join(options_.exclude(), ", "),
                            seen.empty() ? std::string("none") : fmt::format("{}", fmt::join(seen, ", "))));
  }
  target_ = register_buffer("target_sparsity", torch::zeros({}, torch::kFloat64));
}

void PruningImpl::update(double sparsity) {
  if (!(sparsity >= 0.0 && sparsity < 1.0)) {
    throw Error(ErrorCategory::kValue, fmt::format("pruning: sparsity must be in [0, 1), got {}", sparsity));
  }
  torch::NoGradGuard no_grad;
  for (auto& site : sites_) {
    const auto scores = site->scores().flatten();
    const auto k = static_cast<int64_t>(std::floor(sparsity * static_cast<double>(scores.numel())));
    auto keep = torch::ones_like(scores);
    if (k > 0) {
      // Already pruned units score 0 and come first; ties keep the lower index (topk's order is stable enough
      // here: the mask below only ever shrinks).
      const auto idx = std::get<1>(scores.topk(k, /*dim=*/0, /*largest=*/false, /*sorted=*/false));
      keep.index_fill_(0, idx, 0.0);
    }
    site->mask.mul_(keep.view(site->mask.sizes()).to(site->mask.dtype()));
  }
  target_.fill_(sparsity);
}

void PruningImpl::apply() {
  torch::NoGradGuard no_grad;
  for (auto& site : sites_) {
    for (auto& t : site->rows) t.mul_(site->spread(t, false).to(t.dtype()));
    for (auto& t : site->cols) t.mul_(site->spread(t, true).to(t.dtype()));
  }
}

void PruningImpl::mask_gradients() {
  remove_gradient_masks();
  for (auto& site : sites_) {
    auto hook = [site](bool column) {
      return [site, column](torch::Tensor g) { return g * site->spread(g, column).to(g.dtype()); };
    };
    for (auto& t : site->rows) site->hooks.emplace_back(t, t.register_hook(hook(false)));
    for (auto& t : site->cols) site->hooks.emplace_back(t, t.register_hook(hook(true)));
  }
}

void PruningImpl::remove_gradient_masks() {
  for (auto& site : sites_) {
    for (auto& [t, id] : site->hooks) t.remove_hook(id);
    site->hooks.clear();
  }
}

double PruningImpl::target_sparsity() const { return target_.item<double>(); }

Report PruningImpl::report() const {
  Report r;
  for (const auto& site : sites_) {
    SiteReport s;
    s.name = site->name;
    s.units = site->mask.numel();
    s.pruned_units = site->mask.eq(0).sum().item<int64_t>();
    for (const auto& group : {site->rows, site->cols}) {
      for (const auto& t : group) {
        s.parameters += t.numel();
        s.zero_parameters += t.eq(0).sum().item<int64_t>();
      }
    }
    r.parameters += s.parameters;
    r.zero_parameters += s.zero_parameters;
    r.sites.push_back(s);
  }
  return r;
}

std::string Report::to_string() const {
  std::vector<std::string> parts;
  for (const auto& s : sites) parts.push_back(fmt::format("{} {}/{}", s.name, s.pruned_units, s.units));
  return fmt::format("pruning: {} sites, {:.1f} % of {} covered parameters zero; pruned units per site: {}", sites.size(),
                     100.0 * sparsity(), parameters, fmt::join(parts, ", "));
}

Pruning prepare(std::shared_ptr<torch::nn::Module> model, Options options) {
  return Pruning(std::move(model), std::move(options));
}

double cubic_sparsity(double start, double end, double progress) {
  const double p = std::clamp(progress, 0.0, 1.0);
  return end + (start - end) * std::pow(1.0 - p, 3);
}

}  // namespace kd::prune
