#include "kd/prune/compact.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/models/transformer_block.h"

namespace kd::prune {
namespace {

int64_t parameter_count(torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

// Indices of the units (rows of `weight`, grouped `group` rows per unit) that are not all zero, with their bias.
torch::Tensor live_units(const torch::Tensor& weight, const torch::Tensor& bias, int64_t group) {
  auto nonzero = weight.detach().ne(0).flatten(1).any(1);
  if (bias.defined()) nonzero = nonzero | bias.detach().ne(0);
  auto per_unit = nonzero.view({-1, group}).any(1);
  auto kept = per_unit.nonzero().flatten();
  if (kept.numel() == 0) kept = torch::zeros({1}, kept.options());  // a layer keeps one unit (a zero one)
  return kept;
}

// Unit indices -> the row indices they cover (unit u of `group` rows: u·group … u·group + group − 1).
torch::Tensor rows_of(const torch::Tensor& units, int64_t group) {
  return (units.unsqueeze(1) * group + torch::arange(group, units.options()).unsqueeze(0)).flatten();
}

// `from` with only the rows (dim 0) or columns (dim 1) in `index`, as a new Linear on the same device and dtype.
kd::nn::Linear sliced(const kd::nn::Linear& from, const torch::Tensor& index, int64_t dim) {
  const auto w = from->weight.detach().index_select(dim, index.to(from->weight.device()));
  const bool bias = from->bias.defined();
  kd::nn::Linear to(torch::nn::LinearOptions(w.size(1), w.size(0)).bias(bias));
  to->to(w.device(), w.scalar_type());
  torch::NoGradGuard no_grad;
  to->weight.copy_(w);
  if (bias) to->bias.copy_(dim == 0 ? from->bias.detach().index_select(0, index.to(w.device())) : from->bias.detach());
  return to;
}

// Copies the attention's four projections, keeping the heads in `heads` (rows of q/k/v, columns of o).
template <typename Attention>
void copy_heads(const Attention& from, Attention& to, const torch::Tensor& rows) {
  to->q_proj = to->replace_module("q_proj", sliced(from->q_proj, rows, 0));
  to->k_proj = to->replace_module("k_proj", sliced(from->k_proj, rows, 0));
  to->v_proj = to->replace_module("v_proj", sliced(from->v_proj, rows, 0));
  to->o_proj = to->replace_module("o_proj", sliced(from->o_proj, rows, 1));
}

// Removes the heads whose values are zero; returns the heads kept.
template <typename Attention, typename Options>
int64_t compact_heads(models::TransformerBlockImpl& block, Attention& attn, Options options) {
  const int64_t H = options.heads();
  const int64_t dh = attn->head_size();
  const auto kept = live_units(attn->v_proj->weight, attn->v_proj->bias, dh);
  if (kept.numel() == H) return H;
  Attention smaller(options.heads(kept.numel()).head_dim(dh));
  copy_heads(attn, smaller, rows_of(kept, dh));
  smaller->train(attn->is_training());
  attn = block.replace_module("attn", smaller);
  block.options.heads(kept.numel()).head_dim(dh);
  return kept.numel();
}

}  // namespace

CompactReport compact(torch::nn::Module& model) {
  CompactReport report;
  report.parameters_before = parameter_count(model);
  for (const auto& item : model.named_modules()) {
    auto* block = dynamic_cast<models::TransformerBlockImpl*>(item.value().get());
    if (!block) continue;
    CompactedBlock b;
    b.name = item.key();
    b.heads_before = block->options.heads();
    b.ffn_before = block->options.ffn();
    b.heads_after = block->attn ? compact_heads(*block, block->attn, block->attn->options)
                                : compact_heads(*block, block->linear_attn, block->linear_attn->options);
    const auto kept = live_units(block->fc1->weight, block->fc1->bias, 1);
    if (kept.numel() != b.ffn_before) {
      const bool training = block->fc1->is_training();
      block->fc1 = block->replace_module("fc1", sliced(block->fc1, kept, 0));
      block->fc2 = block->replace_module("fc2", sliced(block->fc2, kept, 1));
      block->fc1->train(training);
      block->fc2->train(training);
      block->options.ffn(kept.numel());
    }
    b.ffn_after = block->options.ffn();
    report.blocks.push_back(b);
  }
  report.parameters_after = parameter_count(model);
  return report;
}

std::string CompactReport::to_string() const {
  std::string s = fmt::format("compacted {} transformer block(s): parameters {} -> {} ({:.1f} %)", blocks.size(),
                              parameters_before, parameters_after,
                              parameters_before > 0 ? 100.0 * double(parameters_after) / double(parameters_before) : 0.0);
  for (const auto& b : blocks) {
    s += fmt::format("; {} heads {} -> {}, ffn {} -> {}", b.name, b.heads_before, b.heads_after, b.ffn_before,
                     b.ffn_after);
  }
  return s;
}

}  // namespace kd::prune
