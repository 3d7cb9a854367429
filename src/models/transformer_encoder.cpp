#include "kd/models/transformer_encoder.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "token_input.h"

namespace kd::models {
namespace {

constexpr const char* kName = "TransformerEncoder";

void check_depth_options(const TransformerEncoderOptions& o) {
  const auto& t = o.depth_thresholds();
  const auto& d = o.depth_layers();
  auto fail = [](const std::string& what) {
    throw Error(ErrorCategory::kValue, fmt::format("{} dynamic depth: {}", kName, what));
  };
  if (t.size() != d.size()) {
    fail(fmt::format("depth_thresholds has {} entries but depth_layers {}; give one layer count per threshold",
                     t.size(), d.size()));
  }
  for (size_t i = 0; i < t.size(); ++i) {
    if (t[i] <= 0 || (i > 0 && t[i] <= t[i - 1])) {
      fail(fmt::format("depth_thresholds [{}] must be positive and strictly increasing", fmt::join(t, ", ")));
    }
    if (d[i] < 1 || d[i] > o.layers() || (i > 0 && d[i] < d[i - 1])) {
      fail(fmt::format("depth_layers [{}] must be non-decreasing and each in [1, layers = {}]", fmt::join(d, ", "),
                       o.layers()));
    }
  }
}

}  // namespace

TransformerEncoderImpl::TransformerEncoderImpl(TransformerEncoderOptions options_) : options(std::move(options_)) {
  const auto& o = options;
  detail::check_sizes(kName, o.vocab(), o.d_model(), o.heads(), o.layers(), o.max_len(), o.dropout(), o.rope_base());
  if (o.pad_token() < -1 || o.pad_token() >= o.vocab()) {
    throw Error(ErrorCategory::kValue, fmt::format("{}: pad_token must be -1 (none) or in [0, vocab = {}), got {}",
                                                   kName, o.vocab(), o.pad_token()));
  }
  if (o.num_classes() < 0) {
    throw Error(ErrorCategory::kValue, fmt::format("{}: num_classes must be >= 0 (0 = no head), got {}", kName,
                                                   o.num_classes()));
  }
  if (o.dynamic_depth()) check_depth_options(o);
  const int64_t ffn = detail::ffn_width(kName, o.ffn(), o.d_model());

  embed = register_module("embed", torch::nn::Embedding(o.vocab(), o.d_model()));
  torch::nn::init::normal_(embed->weight, 0.0, 0.02);
  dropout_ = register_module("dropout", torch::nn::Dropout(o.dropout()));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.layers(); ++i) {
    block_list_.emplace_back(TransformerBlockOptions(o.d_model(), o.heads(), ffn)
                                 .dropout(o.dropout())
                                 .attention(o.attention())
                                 .attention_surrogate(o.attention_maps()));
    blocks->push_back(block_list_.back());
  }
  ln_f = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.d_model()})));
  if (o.num_classes() > 0) head = register_module("head", kd::nn::Linear(o.d_model(), o.num_classes()));
}

int64_t TransformerEncoderImpl::depth_for(int64_t real_length) const {
  if (!options.dynamic_depth()) return options.layers();
  const auto& t = options.depth_thresholds();
  for (size_t i = 0; i < t.size(); ++i) {
    if (real_length <= t[i]) return options.depth_layers()[i];
  }
  return options.layers();
}

ModelOutput TransformerEncoderImpl::forward(const torch::Tensor& input) {
  const auto tokens = detail::check_tokens(input, options.vocab(), options.max_len(), kName);
  const int64_t L = tokens.size(1);  // no B as a number: see MultiHeadSelfAttention (traces keep the batch free)

  ModelOutput out;
  auto e = embed->forward(tokens);
  // A frozen teacher's embedding output is a fresh tensor: make it the leaf R1 differentiates.
  if (torch::GradMode::is_enabled() && !e.requires_grad()) e.requires_grad_(true);
  out.extras["embeddings"] = e;

  torch::Tensor real, blocked;  // real: [B, L] true at non-padding; blocked: [B, 1, 1, L]
  int64_t longest = L;
  if (options.pad_token() >= 0) {
    real = tokens.ne(options.pad_token());
    const auto counts = real.sum(1);
    // An all-padding row keeps every key (finite numbers; it pools to zeros and is ignored).
    blocked = real.logical_not().logical_and(counts.gt(0).unsqueeze(1)).unsqueeze(1).unsqueeze(2);
    if (options.dynamic_depth()) longest = counts.max().item<int64_t>();
  }
  const int64_t depth = depth_for(longest);
  // Layer-matching losses resolve student layers against the whole depth and skip those that did not run.
  if (options.dynamic_depth()) out.extras[kSkippedLayers] = torch::tensor(options.layers() - depth, torch::kInt64);

  const auto rope = rotary_tables(L, options.d_model() / options.heads(), options.rope_base(), e.options());
  auto x = dropout_->forward(e);
  for (int64_t i = 0; i < depth; ++i) {
    auto r = block_list_[static_cast<size_t>(i)]->forward(x, rope, blocked);
    x = r.output;
    out.hidden_states.push_back(x);
    if (r.probabilities.defined()) out.attentions.push_back(r.probabilities);
  }
  const auto h = ln_f->forward(x);
  torch::Tensor pooled;
  if (real.defined()) {
    const auto m = real.to(h.scalar_type()).unsqueeze(-1);
    pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0);
  } else {
    pooled = h.mean(1);
  }
  out.extras["pooled"] = pooled;
  out.logits = head ? head->forward(pooled) : pooled;
  return out;
}

}  // namespace kd::models
