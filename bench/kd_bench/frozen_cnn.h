#pragma once
/// \file
/// W1's frozen teacher with each BatchNorm folded into the convolution before it.

#include <torch/nn/module.h>
#include <torch/types.h>

#include "kd/core/model_output.h"
#include "kd/models/cnn.h"

namespace kd::bench {

/// A convolution's weight and bias with the eval-mode BatchNorm after it folded in:
///
///   s = γ / √(running_var + ε),   W' = W · s (per output channel),   b' = (b − running_mean) · s + β,
///
/// so conv(x; W', b') = BN(conv(x; W, b)) exactly in eval mode (up to rounding).
struct FoldedConv {
  torch::Tensor weight, bias;
};
FoldedConv fold_batchnorm(const torch::Tensor& weight, const torch::Tensor& bias, const torch::Tensor& running_mean,
                          const torch::Tensor& running_var, const torch::Tensor& gamma, const torch::Tensor& beta,
                          double eps);

/// kd::models::CnnTeacher (default widths, no QAT points) in inference form: conv+BN pairs folded,
/// ReLU applied in place, optionally channels-last weights and activations. Outputs as the
/// teacher's: logits, hidden_states [0] after the first pool and [1] after the second (both
/// returned in the default contiguous layout), no attention maps. No parameter requires grad.
class FrozenCnnTeacherImpl : public torch::nn::Module {
 public:
  /// `mkldnn`: weights reordered once into oneDNN's blocked layout (at::mkldnn_reorder_conv2d_weight)
  /// and activations kept as MKL-DNN tensors between the convs (to_mkldnn / to_dense at the ends).
  FrozenCnnTeacherImpl(models::CnnTeacherImpl& teacher, bool channels_last, bool mkldnn = false);
  ModelOutput forward(const torch::Tensor& images);

 private:
  FoldedConv c1_, c2_, c3_, c4_;
  torch::Tensor fc1_w_, fc1_b_, fc2_w_, fc2_b_;
  bool channels_last_, mkldnn_;
  FoldedConv m1_, m2_, m3_, m4_;  // oneDNN-blocked copies (mkldnn_)
};
TORCH_MODULE(FrozenCnnTeacher);

}  // namespace kd::bench
