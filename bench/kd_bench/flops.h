#pragma once
/// \file
/// Analytic FLOP counts of the benchmark workloads (bench/RESULTS.md repeats the formulas).
///
/// Conventions (the usual ones, so the count does not depend on the implementation):
/// - a matmul of [m, k] by [k, n] is 2·m·n·k FLOPs (one multiply and one add per term);
/// - a convolution is 2·C_out·H_out·W_out·(C_in / groups)·k² FLOPs per image;
/// - attention is QKᵀ plus P·V, 2·L²·d_model each per sequence (all heads together), over the full
///   L×L matrix even when causal (the implementation computes the full matrix and masks it);
/// - a step costs 1× the teacher's forward (it is frozen: no backward) plus 3× the student's
///   forward (forward + backward ≈ 3× forward), loss projections counted with the student;
/// - element-wise work (BatchNorm, ReLU/GELU, LayerNorm, softmax, pooling, losses, the optimizer)
///   and embeddings are not counted: they are memory-bound and small beside the matmuls.

#include <cstdint>

namespace kd::bench::flops {

/// 2·C_out·H·W·(C_in/groups)·k² per image, output size H×W.
inline double conv(int64_t c_in, int64_t c_out, int64_t h, int64_t w, int64_t k, int64_t groups = 1) {
  return 2.0 * c_out * h * w * (c_in / groups) * k * k;
}

/// 2·m·n·k.
inline double matmul(int64_t m, int64_t n, int64_t k) { return 2.0 * m * n * k; }

/// W1 teacher forward, per image: convs 1→32, 32→32 at 28², 32→64, 64→64 at 14², fc 3136→256→10.
inline double w1_teacher_per_image() {
  return conv(1, 32, 28, 28, 3) + conv(32, 32, 28, 28, 3) + conv(32, 64, 14, 14, 3) + conv(64, 64, 14, 14, 3) +
         matmul(1, 256, 3136) + matmul(1, 10, 256);
}

/// W1 student forward plus the 1×1 projection 32→64 of its 7×7 feature, per image.
inline double w1_student_per_image() {
  return conv(1, 16, 28, 28, 3) + conv(16, 16, 14, 14, 3, /*groups=*/16) + conv(16, 32, 14, 14, 1) +
         matmul(1, 10, 1568) + conv(32, 64, 7, 7, 1);
}

/// One pre-LN transformer block forward over B sequences of length L:
/// 4 projections 2·N·D² each + FFN 2·2·N·D·F + attention 2·2·B·L²·D, N = B·L.
inline double block(int64_t B, int64_t L, int64_t D, int64_t F) {
  const int64_t N = B * L;
  return 4 * matmul(N, D, D) + matmul(N, F, D) + matmul(N, D, F) + 2.0 * 2.0 * B * L * L * D;
}

}  // namespace kd::bench::flops
