#include "kd/models/causal_lm.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/eval_mode.h"
#include "kd/core/model_output.h"
#include "token_input.h"

namespace kd::models {
namespace {
constexpr const char* kName = "CausalLM";
}  // namespace

CausalLMImpl::CausalLMImpl(CausalLMOptions options_) : options(std::move(options_)) {
  const auto& o = options;
  detail::check_sizes(kName, o.vocab(), o.d_model(), o.heads(), o.layers(), o.max_len(), o.dropout(), o.rope_base());
  const int64_t ffn = detail::ffn_width(kName, o.ffn(), o.d_model());
  embed = register_module("embed", torch::nn::Embedding(o.vocab(), o.d_model()));
  torch::nn::init::normal_(embed->weight, 0.0, 0.02);
  dropout_ = register_module("dropout", torch::nn::Dropout(o.dropout()));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.layers(); ++i) {
    block_list_.emplace_back(TransformerBlockOptions(o.d_model(), o.heads(), ffn).dropout(o.dropout()));
    blocks->push_back(block_list_.back());
  }
  ln_f = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.d_model()})));
  lm_head = register_module("lm_head", kd::nn::Linear(torch::nn::LinearOptions(o.d_model(), o.vocab()).bias(false)));
}

ModelOutput CausalLMImpl::forward(const torch::Tensor& tokens) { return run(tokens, true); }

ModelOutput CausalLMImpl::run(const torch::Tensor& input, bool keep_layers) {
  const auto tokens = detail::check_tokens(input, options.vocab(), options.max_len(), kName);
  const int64_t L = tokens.size(1);
  ModelOutput out;
  auto e = embed->forward(tokens);
  // A frozen teacher's embedding output is a fresh tensor: make it the leaf R1 differentiates.
  if (torch::GradMode::is_enabled() && !e.requires_grad()) e.requires_grad_(true);
  out.extras["embeddings"] = e;
  const auto blocked =
      torch::ones({L, L}, torch::TensorOptions().dtype(torch::kBool).device(tokens.device())).triu(1).view({1, 1, L, L});
  const auto rope = rotary_tables(L, options.d_model() / options.heads(), options.rope_base(), e.options());
  auto x = dropout_->forward(e);
  for (auto& block : block_list_) {
    auto r = block->forward(x, rope, blocked);
    x = r.output;
    if (keep_layers) {
      out.hidden_states.push_back(x);
      out.attentions.push_back(r.probabilities);
    }
  }
  out.logits = lm_head->forward(ln_f->forward(x));
  return out;
}

torch::Tensor CausalLMImpl::generate(const torch::Tensor& prompt, int64_t max_new_tokens,
                                     const GenerateOptions& generate_options) {
  if (!prompt.defined() || prompt.dim() < 1 || prompt.dim() > 2 || prompt.size(-1) == 0) {
    throw Error(ErrorCategory::kShape,
                fmt::format("CausalLM::generate expects a prompt [B, L] or [L] with L >= 1 token ids, got {}",
                            shape_string(prompt)));
  }
  if (max_new_tokens < 0) {
    throw Error(ErrorCategory::kValue, fmt::format("CausalLM::generate: max_new_tokens must be >= 0, got {}",
                                                   max_new_tokens));
  }
  TokenSampler sampler(generate_options);
  EvalModeGuard eval_mode(*this);
  torch::NoGradGuard no_grad;
  auto seq = prompt.dim() == 1 ? prompt.unsqueeze(0) : prompt;
  seq = detail::check_tokens(seq, options.vocab(), std::numeric_limits<int64_t>::max(), kName);
  for (int64_t step = 0; step < max_new_tokens; ++step) {
    const int64_t L = seq.size(1);
    const auto window = L > options.max_len() ? seq.narrow(1, L - options.max_len(), options.max_len()) : seq;
    const auto logits = run(window, false).logits.select(1, -1);  // [B, V]
    seq = torch::cat({seq, sampler.sample(logits).to(seq.device()).unsqueeze(1)}, 1);
  }
  return prompt.dim() == 1 ? seq.squeeze(0) : seq;
}

torch::Tensor byte_tokens(const std::string& text) {
  auto ids = torch::empty({static_cast<int64_t>(text.size())}, torch::kLong);
  auto* p = ids.data_ptr<int64_t>();
  for (size_t i = 0; i < text.size(); ++i) p[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string printable_bytes(const torch::Tensor& tokens) {
  const auto t = tokens.reshape({-1}).to(torch::kCPU, torch::kLong).contiguous();
  const auto* p = t.data_ptr<int64_t>();
  std::string text;
  for (int64_t i = 0; i < t.numel(); ++i) text += (p[i] == '\n' || (p[i] >= 32 && p[i] < 127)) ? static_cast<char>(p[i]) : '.';
  return text;
}

}  // namespace kd::models
