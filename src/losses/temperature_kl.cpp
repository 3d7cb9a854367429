#include "kd/losses/temperature_kl.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "kd/core/error.h"

namespace kd {
namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// TRL's generalized_jsd_loss turns JSD's end points into the two KLs.
KLMode effective_mode(KLMode mode, double beta) {
  if (mode != KLMode::kJSD) return mode;
  if (beta == 0.0) return KLMode::kForward;
  if (beta == 1.0) return KLMode::kReverse;
  return KLMode::kJSD;
}

// Half-precision logits are softened in float32: exp/log in fp16 lose too much.
torch::ScalarType compute_dtype(const Tensor& t) {
  const auto st = t.scalar_type();
  return (st == torch::kHalf || st == torch::kBFloat16) ? torch::kFloat : st;
}

struct Config {
  double T;
  KLMode mode;  // effective
  double beta;
  bool sparse;
};

struct ChunkResult {
  Tensor loss;  // Σ over the chunk's rows of D (0-dim), when asked for
  Tensor gs;    // ∂(Σ_rows D)/∂(z_s/T), [n, V]
  Tensor gt;    // ∂(Σ_rows D)/∂(z_t/T), [n, D]
};

// D for one chunk of rows and, on request, its gradients with respect to the
// softened logits. zs [n, V]; zt [n, V] (dense) or [n, k] with idx [n, k] (sparse).
// The general path: reverse KL, JSD, sparse teachers, teacher gradients. Its
// temporaries are per chunk (in-place ops and early releases keep them few).
ChunkResult chunk_divergence(const Tensor& zs, const Tensor& zt, const Tensor& idx, const Config& c, bool want_loss,
                             bool want_gs, bool want_gt) {
  const auto dt = compute_dtype(zs);
  auto soften = [&](const Tensor& z) { return z.to(zs.device(), dt).div(c.T); };
  // Student log-probabilities on the teacher's support (see temperature_kl_topk for the rule).
  const bool gathered = c.sparse && c.mode == KLMode::kForward;
  Tensor xs = soften(zs);
  Tensor log_q, lse;
  if (!c.sparse) {
    log_q = torch::log_softmax(xs, -1);
  } else if (gathered) {
    lse = torch::logsumexp(xs, {-1}, /*keepdim=*/true);
    log_q = xs.gather(1, idx).sub_(lse);
  } else {
    log_q = torch::log_softmax(xs.gather(1, idx), -1);
  }
  if (!(want_gs && gathered)) xs = Tensor();
  const Tensor log_p = torch::log_softmax(soften(zt), -1);
  const Tensor p = log_p.exp();

  ChunkResult r;
  Tensor gq;  // ∂D/∂log q on the support, when the generic chain below is used
  Tensor q;
  switch (c.mode) {
    case KLMode::kForward: {
      Tensor a = log_p - log_q;  // log(p_t / p_s)
      Tensor row = (want_loss || want_gt) ? (p * a).sum(-1, /*keepdim=*/true) : Tensor();
      if (want_loss) r.loss = row.sum();
      if (want_gt) r.gt = a.sub_(row).mul_(p);  // p ⊙ (a − D)
      a = Tensor();
      if (want_gs) {
        if (!c.sparse) {
          r.gs = log_q.exp_().sub_(p);  // softmax(z_s/T) − p_t
          log_q = Tensor();
        } else {
          gq = -p;
        }
      }
      break;
    }
    case KLMode::kReverse: {
      q = log_q.exp();
      Tensor b = log_q - log_p;  // log(p_s / p_t)
      if (want_loss) r.loss = (q * b).sum();
      if (want_gs) gq = b.add_(1.0).mul_(q);  // q ⊙ (b + 1)
      if (want_gt) r.gt = p - q;
      break;
    }
    case KLMode::kJSD: {
      const double beta = c.beta;
      q = log_q.exp();
      const Tensor log_m = torch::logaddexp(log_p + std::log(beta), log_q + std::log1p(-beta));
      Tensor dp = log_p - log_m;  // log(p_t / m)
      Tensor dq = log_q - log_m;  // log(p_s / m)
      Tensor kl_pm = (p * dp).sum(-1, /*keepdim=*/true);
      if (want_loss) r.loss = beta * kl_pm.sum() + (1.0 - beta) * (q * dq).sum();
      if (want_gs) gq = dq.mul_(q).mul_(1.0 - beta);          // (1−β)·q ⊙ log(q/m)
      if (want_gt) r.gt = dp.sub_(kl_pm).mul_(p).mul_(beta);  // β·p ⊙ (log(p/m) − KL(p‖m))
      break;
    }
  }

  if (want_gs && gq.defined()) {
    // Chain through the log-softmax that produced log q.
    const Tensor sum_gq = gq.sum(-1, /*keepdim=*/true);
    if (!c.sparse) {
      r.gs = gq.sub_(q * sum_gq);
    } else if (gathered) {
      // log q = x[S] − logsumexp(x): ∂/∂x = scatter(gq) − softmax(x)·Σ gq.
      r.gs = xs.sub_(lse).exp_().mul_(sum_gq).neg_().scatter_add_(1, idx, gq);
    } else {
      if (!q.defined()) q = log_q.exp();
      r.gs = torch::zeros_like(zs, zs.options().dtype(dt)).scatter_add_(1, idx, gq.sub_(q * sum_gq));
    }
  }
  return r;
}

// Dense forward KL has its own lean path (for the student's gradient; a teacher
// gradient goes through chunk_divergence).
bool is_hot_path(const Config& c) { return !c.sparse && c.mode == KLMode::kForward; }

// Rows in the largest chunk.
int64_t chunk_rows(int64_t total_rows, const Tensor& rows, int64_t chunk_size) {
  const int64_t m = rows.defined() ? rows.size(0) : total_rows;
  return std::max<int64_t>(1, chunk_size > 0 ? std::min(chunk_size, m) : m);
}

// Calls fn(start, n, rows_chunk) for consecutive chunks over the M counted rows;
// rows_chunk is undefined when every row counts (then the chunk is rows [start, start+n)).
template <typename Fn>
void for_each_chunk(int64_t total_rows, const Tensor& rows, int64_t chunk_size, Fn fn) {
  const int64_t m = rows.defined() ? rows.size(0) : total_rows;
  const int64_t step = chunk_size > 0 ? chunk_size : std::max<int64_t>(m, 1);
  for (int64_t start = 0; start < m; start += step) {
    const int64_t n = std::min(step, m - start);
    fn(start, n, rows.defined() ? rows.narrow(0, start, n) : Tensor());
  }
}

Tensor take_rows(const Tensor& t, int64_t start, int64_t n, const Tensor& rows_chunk) {
  if (!t.defined()) return t;
  return rows_chunk.defined() ? t.index_select(0, rows_chunk.to(t.device())) : t.narrow(0, start, n);
}

// Chunk-sized buffers reused across the chunks of one pass: the allocator sees a
// few large blocks once instead of several per chunk. With per-chunk temporaries
// the resident peak varied from run to run and was up to 0.57 logits-sizes higher,
// freed blocks staying resident (bench/KL_MEMORY.md).
class Workspace {
 public:
  Workspace(int64_t rows, int64_t cols, torch::TensorOptions options) : rows_(rows), cols_(cols), options_(options) {}
  Tensor get(size_t slot, int64_t n) {
    if (!buffers_[slot].defined()) buffers_[slot] = torch::empty({rows_, cols_}, options_);
    return buffers_[slot].narrow(0, 0, n);
  }

 private:
  int64_t rows_, cols_;
  torch::TensorOptions options_;
  Tensor buffers_[3];
};

// dst ← rows of src (rows [start, start+n), or the rows listed in rows_chunk), converted to dst's dtype.
void copy_rows(Tensor& dst, const Tensor& src, int64_t start, int64_t n, const Tensor& rows_chunk) {
  if (!rows_chunk.defined()) {
    dst.copy_(src.narrow(0, start, n));
  } else if (dst.scalar_type() == src.scalar_type() && dst.device() == src.device()) {
    at::index_select_out(dst, src, 0, rows_chunk.to(src.device()));
  } else {
    dst.copy_(src.index_select(0, rows_chunk.to(src.device())));
  }
}

// Dense forward KL, the common case, in at most three workspace buffers:
// Σ_rows Σ_c p_t·(log p_t − log p_s) of one chunk.
Tensor forward_kl_chunk_loss(const Tensor& student, const Tensor& teacher, int64_t start, int64_t n,
                             const Tensor& rows_chunk, double T, Workspace& ws) {
  Tensor x = ws.get(0, n), log_q = ws.get(1, n), log_p = ws.get(2, n);
  copy_rows(x, student, start, n, rows_chunk);
  at::log_softmax_out(log_q, x.div_(T), -1);
  copy_rows(x, teacher, start, n, rows_chunk);
  at::log_softmax_out(log_p, x.div_(T), -1);
  at::exp_out(x, log_p);  // p_t
  return log_p.sub_(log_q).mul_(x).sum();
}

// out ← softmax(z_s/T) − softmax(z_t/T) for one chunk (∂D/∂(z_s/T) of dense forward KL).
void forward_kl_chunk_grad(const Tensor& student, const Tensor& teacher, int64_t start, int64_t n,
                           const Tensor& rows_chunk, double T, Workspace& ws, Tensor& out) {
  Tensor x = ws.get(0, n), p = ws.get(1, n);
  copy_rows(x, student, start, n, rows_chunk);
  at::softmax_out(out, x.div_(T), -1);
  copy_rows(x, teacher, start, n, rows_chunk);
  at::softmax_out(p, x.div_(T), -1);
  out.sub_(p);
}

// The loss as one autograd node: chunked in forward, and the gradients recomputed
// chunk by chunk in backward, so nothing of size [N, V] is kept between the passes
// (only the inputs themselves) and backward allocates just the gradients.
class ChunkedDivergence : public torch::autograd::Function<ChunkedDivergence> {
 public:
  // Differentiable inputs are student [N, V] and teacher [N, V] (or top-k values [N, k]);
  // the rest travels in `aux`, which autograd does not see.
  struct Aux {
    Tensor indices;  // [N, k] int64, or undefined for a dense teacher
    Tensor rows;     // counted row numbers [M] int64, or undefined for all N
  };

  static Tensor forward(AutogradContext* ctx, const Tensor& student, const Tensor& teacher, const Aux& aux, double T,
                        int64_t mode, double beta, int64_t chunk_size, double count) {
    ctx->save_for_backward({student, teacher});
    if (aux.indices.defined()) ctx->saved_data["indices"] = aux.indices;
    if (aux.rows.defined()) ctx->saved_data["rows"] = aux.rows;
    ctx->saved_data["T"] = T;
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["chunk_size"] = chunk_size;
    ctx->saved_data["count"] = count;
    const Config c{T, static_cast<KLMode>(mode), beta, aux.indices.defined()};
    torch::NoGradGuard no_grad;
    const auto dt = compute_dtype(student);
    Tensor total = torch::zeros({}, student.options().dtype(dt));
    Workspace ws(chunk_rows(student.size(0), aux.rows, chunk_size), student.size(1), student.options().dtype(dt));
    for_each_chunk(student.size(0), aux.rows, chunk_size, [&](int64_t start, int64_t n, const Tensor& rc) {
      if (is_hot_path(c)) {
        total.add_(forward_kl_chunk_loss(student, teacher, start, n, rc, T, ws));
      } else {
        total.add_(chunk_divergence(take_rows(student, start, n, rc), take_rows(teacher, start, n, rc),
                                    take_rows(aux.indices, start, n, rc), c, true, false, false)
                       .loss);
      }
    });
    return total.mul_(T * T / count);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &student = saved[0], &teacher = saved[1];
    auto extra = [&](const char* name) {
      const auto it = ctx->saved_data.find(name);
      return it == ctx->saved_data.end() ? Tensor() : it->second.toTensor();
    };
    const Tensor indices = extra("indices"), rows = extra("rows");
    const double T = ctx->saved_data["T"].toDouble();
    const int64_t chunk_size = ctx->saved_data["chunk_size"].toInt();
    const double count = ctx->saved_data["count"].toDouble();
    const Config c{T, static_cast<KLMode>(ctx->saved_data["mode"].toInt()), ctx->saved_data["beta"].toDouble(),
                   indices.defined()};
    const bool want_s = ctx->needs_input_grad(0), want_t = ctx->needs_input_grad(1);
    torch::NoGradGuard no_grad;
    // L = T²/N · Σ D(z/T)  ⇒  ∂L/∂z = T/N · ∂D/∂(z/T).
    const Tensor scale = grad_outputs[0].to(compute_dtype(student)) * (T / count);
    auto make_grad = [&](const Tensor& like) {
      return rows.defined() ? torch::zeros_like(like) : torch::empty_like(like);
    };
    Tensor grad_s = want_s ? make_grad(student) : Tensor();
    Tensor grad_t = want_t ? make_grad(teacher) : Tensor();
    const auto dt = compute_dtype(student);
    if (want_s && !want_t && is_hot_path(c)) {
      Workspace ws(chunk_rows(student.size(0), rows, chunk_size), student.size(1), student.options().dtype(dt));
      // Unmasked, same dtype: the chunk's gradient is written straight into grad_s.
      const bool direct = !rows.defined() && grad_s.scalar_type() == dt;
      for_each_chunk(student.size(0), rows, chunk_size, [&](int64_t start, int64_t n, const Tensor& rc) {
        Tensor out = direct ? grad_s.narrow(0, start, n) : ws.get(2, n);
        forward_kl_chunk_grad(student, teacher, start, n, rc, T, ws, out);
        out.mul_(scale);
        if (rc.defined()) {
          grad_s.index_copy_(0, rc.to(grad_s.device()), out.to(grad_s.device(), grad_s.scalar_type()));
        } else if (!direct) {
          grad_s.narrow(0, start, n).copy_(out);
        }
      });
    } else if (want_s || want_t) {
      for_each_chunk(student.size(0), rows, chunk_size, [&](int64_t start, int64_t n, const Tensor& rc) {
        auto r = chunk_divergence(take_rows(student, start, n, rc), take_rows(teacher, start, n, rc),
                                  take_rows(indices, start, n, rc), c, false, want_s, want_t);
        auto put = [&](Tensor& grad, Tensor g) {
          g.mul_(scale);
          if (rc.defined()) {
            grad.index_copy_(0, rc.to(grad.device()), g.to(grad.device(), grad.scalar_type()));
          } else {
            grad.narrow(0, start, n).copy_(g);
          }
        };
        if (want_s) put(grad_s, std::move(r.gs));
        if (want_t) put(grad_t, std::move(r.gt));
      });
    }
    return {grad_s, grad_t, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

const char* mode_name(KLMode mode) {
  switch (mode) {
    case KLMode::kForward: return "forward KL";
    case KLMode::kReverse: return "reverse KL";
    case KLMode::kJSD: return "JSD";
  }
  return "?";
}

void check_options(const TemperatureKLOptions& o, double T) {
  if (!(T > 0.0) || !std::isfinite(T)) {
    throw Error(ErrorCategory::kValue,
                fmt::format("TemperatureKL: the temperature must be a finite number > 0, got {}; set "
                            "TemperatureKLOptions.temperature (or a temperature_schedule that stays > 0)",
                            T));
  }
  if (!(o.beta() >= 0.0 && o.beta() <= 1.0)) {
    throw Error(ErrorCategory::kValue, fmt::format("TemperatureKLOptions.beta must be in [0, 1], got {}", o.beta()));
  }
  if (o.chunk_size() < 0) {
    throw Error(ErrorCategory::kValue,
                fmt::format("TemperatureKLOptions.chunk_size must be >= 0 (0 = no chunking), got {}", o.chunk_size()));
  }
}

void check_floating(const Tensor& t, const char* what) {
  if (!t.is_floating_point()) {
    throw Error(ErrorCategory::kValue, fmt::format("TemperatureKL: {} must be floating point, got {} {}", what,
                                                   shape_string(t), toString(t.scalar_type())));
  }
}

// Counted rows of the flattened logits as (row numbers or undefined = all, count).
std::pair<Tensor, int64_t> counted_rows(const Tensor& student, const Tensor& row_mask) {
  const int64_t n = student.numel() / std::max<int64_t>(student.size(-1), 1);
  if (!row_mask.defined()) return {Tensor(), n};
  if (row_mask.sizes() != student.sizes().slice(0, student.dim() - 1)) {
    throw Error(ErrorCategory::kShape,
                fmt::format("TemperatureKL: row mask {} must have the logits' shape {} without the class "
                            "dimension",
                            shape_string(row_mask), shape_string(student)));
  }
  const Tensor flat = row_mask.reshape({-1}).to(student.device()) != 0;
  const int64_t count = flat.sum().item<int64_t>();
  if (count == n) return {Tensor(), n};
  return {flat.nonzero().squeeze(1), count};
}

// `counted` (when given) receives the number of rows the mean is over, so a caller
// that reports the count reads the one host sync this already made.
Tensor divergence(const Tensor& student_logits, const Tensor& teacher, const Tensor& indices, const Tensor& row_mask,
                  const TemperatureKLOptions& options, int64_t* counted = nullptr) {
  const double T = options.temperature();
  check_options(options, T);
  const int64_t V = student_logits.size(-1);
  const int64_t D = teacher.size(-1);
  const auto [rows, count] = counted_rows(student_logits, row_mask);
  if (counted != nullptr) *counted = count;
  const Tensor s2 = student_logits.reshape({-1, V});
  const Tensor t2 = teacher.reshape({-1, D});
  const Tensor i2 = indices.defined() ? indices.reshape({-1, D}).to(s2.device(), torch::kLong) : Tensor();
  const auto mode = effective_mode(options.mode(), options.beta());
  Tensor loss =
      ChunkedDivergence::apply(s2, t2, ChunkedDivergence::Aux{i2, rows}, T, static_cast<int64_t>(mode), options.beta(),
                               options.chunk_size(), static_cast<double>(std::max<int64_t>(count, 1)));
  return loss;
}

// `teacher` (when defined) is named in the message too.
void check_rank(const Tensor& student_logits, const Tensor& teacher = {}, const char* teacher_name = "teacher logits") {
  if (!student_logits.defined()) {
    throw Error(ErrorCategory::kModel,
                "TemperatureKL: the student output has no logits; make the model's forward return logits");
  }
  if (student_logits.dim() < 2) {
    throw Error(ErrorCategory::kShape,
                teacher.defined()
                    ? fmt::format("TemperatureKL: student logits {} and {} {} must be [B, C] or [B, L, V] (classes "
                                  "last)",
                                  shape_string(student_logits), teacher_name, shape_string(teacher))
                    : fmt::format("TemperatureKL: student logits {} must be [B, C] or [B, L, V] (classes last)",
                                  shape_string(student_logits)));
  }
  check_floating(student_logits, "the student logits");
}

void check_full_teacher(const Tensor& student_logits, const Tensor& teacher_logits) {
  ModelOutput s, t;
  s.logits = student_logits;
  t.logits = teacher_logits;
  check_logits_comparable(s, t);  // kModel for missing logits, kShape naming both shapes
  check_rank(student_logits, teacher_logits);
  check_floating(teacher_logits, "the teacher logits");
}

void check_topk_teacher(const Tensor& student_logits, const Tensor& teacher_topk_logits,
                        const Tensor& teacher_topk_indices) {
  check_rank(student_logits, teacher_topk_logits, "teacher top-k logits");
  if (!teacher_topk_logits.defined() || !teacher_topk_indices.defined()) {
    throw Error(ErrorCategory::kModel,
                "TemperatureKL: a sparse teacher needs both top-k logits and top-k indices; one is missing");
  }
  check_floating(teacher_topk_logits, "the teacher top-k logits");
  const auto lead = student_logits.sizes().slice(0, student_logits.dim() - 1);
  if (teacher_topk_logits.sizes() != teacher_topk_indices.sizes() ||
      teacher_topk_logits.dim() != student_logits.dim() ||
      teacher_topk_logits.sizes().slice(0, teacher_topk_logits.dim() - 1) != lead) {
    throw Error(ErrorCategory::kShape,
                fmt::format("TemperatureKL: teacher top-k logits {} and indices {} must both be [..., k] with the "
                            "leading dimensions of the student logits {}; feed both models the same batch",
                            shape_string(teacher_topk_logits), shape_string(teacher_topk_indices),
                            shape_string(student_logits)));
  }
  if (teacher_topk_indices.is_floating_point() || teacher_topk_indices.scalar_type() == torch::kBool) {
    throw Error(ErrorCategory::kValue, fmt::format("TemperatureKL: teacher top-k indices must be integers, got {}",
                                                   toString(teacher_topk_indices.scalar_type())));
  }
  const int64_t V = student_logits.size(-1), k = teacher_topk_logits.size(-1);
  if (k < 1 || k > V) {
    throw Error(ErrorCategory::kShape,
                fmt::format("TemperatureKL: teacher keeps k = {} classes (top-k logits {}) but the student "
                            "predicts {} (logits {}); need 1 <= k <= V",
                            k, shape_string(teacher_topk_logits), V, shape_string(student_logits)));
  }
  if (teacher_topk_indices.numel() > 0) {
    const int64_t lo = teacher_topk_indices.min().item<int64_t>(), hi = teacher_topk_indices.max().item<int64_t>();
    if (lo < 0 || hi >= V) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("TemperatureKL: teacher top-k indices {} range over [{}, {}] but the student logits {} "
                              "have classes [0, {}]; the cache was built for another vocabulary",
                              shape_string(teacher_topk_indices), lo, hi, shape_string(student_logits), V - 1));
    }
  }
}

// The divergence against a full or a top-k teacher after its checks: the one path of the functionals
// and the module. `counted` as in divergence().
Tensor full_kl(const Tensor& student_logits, const Tensor& teacher_logits, const Tensor& row_mask,
               const TemperatureKLOptions& options, int64_t* counted = nullptr) {
  check_full_teacher(student_logits, teacher_logits);
  return divergence(student_logits, teacher_logits, Tensor(), row_mask, options, counted);
}

Tensor topk_kl(const Tensor& student_logits, const Tensor& topk_logits, const Tensor& topk_indices,
               const Tensor& row_mask, const TemperatureKLOptions& options, int64_t* counted = nullptr) {
  check_topk_teacher(student_logits, topk_logits, topk_indices);
  return divergence(student_logits, topk_logits, topk_indices, row_mask, options, counted);
}

}  // namespace

namespace functional {

torch::Tensor temperature_kl(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                             const TemperatureKLOptions& options) {
  return temperature_kl(student_logits, teacher_logits, torch::Tensor(), options);
}

torch::Tensor temperature_kl(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                             const torch::Tensor& row_mask, const TemperatureKLOptions& options) {
  return full_kl(student_logits, teacher_logits, row_mask, options);
}

torch::Tensor temperature_kl_topk(const torch::Tensor& student_logits, const torch::Tensor& teacher_topk_logits,
                                  const torch::Tensor& teacher_topk_indices, const torch::Tensor& row_mask,
                                  const TemperatureKLOptions& options) {
  return topk_kl(student_logits, teacher_topk_logits, teacher_topk_indices, row_mask, options);
}

torch::Tensor standardize_logits(const torch::Tensor& logits, double eps) {
  if (!logits.defined() || logits.dim() < 1 || logits.size(-1) < 2) {
    throw Error(ErrorCategory::kShape,
                fmt::format("standardize_logits: logits {} need at least two classes in the last dimension",
                            logits.defined() ? shape_string(logits) : std::string("(undefined)")));
  }
  const auto mean = logits.mean(-1, /*keepdim=*/true);
  const auto stdv = logits.std(-1, /*unbiased=*/true, /*keepdim=*/true);
  return (logits - mean) / (stdv + eps);
}

torch::Tensor kl_counted_rows(const torch::Tensor& student_logits, const torch::Tensor& mask,
                              const torch::Tensor& targets, std::optional<int64_t> ignore_index) {
  check_rank(student_logits);
  const auto lead = student_logits.sizes().slice(0, student_logits.dim() - 1);
  auto rows = torch::ones(lead, student_logits.options().dtype(torch::kBool));
  if (mask.defined()) {
    const auto m = mask.to(student_logits.device()) != 0;
    if (m.sizes() == lead) {
      rows &= m;
    } else if (student_logits.dim() >= 3 && m.dim() == 1 && m.size(0) == student_logits.size(0)) {
      std::vector<int64_t> shape(student_logits.dim() - 1, 1);
      shape[0] = m.size(0);
      rows &= m.reshape(shape);
    } else if (student_logits.dim() >= 3) {
      throw Error(ErrorCategory::kShape,
                  fmt::format("TemperatureKL: mask {} does not fit logits {}: a mask over sequence logits must "
                              "have their shape without the class dimension (or be [B])",
                              shape_string(mask), shape_string(student_logits)));
    }
    // else: an input-padding mask of a pooled classifier; every logits row is real.
  }
  if (targets.defined() && ignore_index.has_value() && !targets.is_floating_point() && !targets.is_complex() &&
      targets.scalar_type() != torch::kBool) {
    if (targets.sizes() != lead) {
      throw Error(ErrorCategory::kShape,
                  fmt::format("TemperatureKL: targets {} do not fit logits {}: class-index targets must have the "
                              "logits' shape without the class dimension (or set ignore_index to std::nullopt)",
                              shape_string(targets), shape_string(student_logits)));
    }
    rows &= targets.to(student_logits.device()) != *ignore_index;
  }
  return rows;
}

}  // namespace functional

TemperatureKLImpl::TemperatureKLImpl(TemperatureKLOptions options_) : options(std::move(options_)) { reset(); }

void TemperatureKLImpl::reset() {
  if (options.temperature_schedule().has_value()) {
    const auto& s = *options.temperature_schedule();
    for (double p : {0.0, 1.0}) {
      if (!(s(p) > 0.0)) {
        throw Error(ErrorCategory::kValue,
                    fmt::format("TemperatureKLOptions.temperature_schedule {} must stay > 0, but is {} at "
                                "progress {}",
                                s.describe(), s(p), p));
      }
    }
    check_options(options, s(0.0));
  } else {
    check_options(options, options.temperature());
  }
}

double TemperatureKLImpl::temperature_at(double progress) const {
  return options.temperature_schedule().has_value() ? (*options.temperature_schedule())(progress)
                                                    : options.temperature();
}

LossResult TemperatureKLImpl::forward(const DistillBatch& batch) {
  const double T = temperature_at(batch.step.progress);
  auto o = options;
  o.temperature(T);
  const auto& raw = batch.student.logits;
  check_rank(raw);
  const auto rows = functional::kl_counted_rows(raw, batch.mask, batch.targets, options.ignore_index());
  const auto zs = options.standardize() ? functional::standardize_logits(raw) : raw;
  LossResult r;
  int64_t counted = 0;
  if (batch.teacher.logits.defined()) {
    const auto& zt = batch.teacher.logits;
    const auto zt_used = options.standardize() ? functional::standardize_logits(zt) : zt;
    r.total = full_kl(zs, zt_used, rows, o, &counted);
  } else if (options.standardize()) {
    throw Error(ErrorCategory::kModel,
                "TemperatureKL with standardize needs the teacher's full logits, but the teacher gives a sparse "
                "top-k teacher (a cache built with top_k > 0): rebuild the cache with top_k 0 or turn standardize off");
  } else {
    const auto& ex = batch.teacher.extras;
    const auto v = ex.find("topk_logits"), i = ex.find("topk_indices");
    if (v == ex.end() || i == ex.end()) {
      throw Error(ErrorCategory::kModel,
                  fmt::format("TemperatureKL ({}): the teacher output has neither logits nor a sparse top-k "
                              "teacher (extras \"topk_logits\" and \"topk_indices\"); make the teacher return "
                              "logits, or read them from a TeacherCache",
                              mode_name(options.mode())));
    }
    r.total = topk_kl(zs, v->second, i->second, rows, o, &counted);
  }
  r.parts["kl"] = r.total.detach();
  r.count = static_cast<double>(counted);
  r.parts["kl.temperature"] =
      torch::scalar_tensor(T, torch::TensorOptions().dtype(r.total.scalar_type()).device(r.total.device()));
  return r;
}

}  // namespace kd
