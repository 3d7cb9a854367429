#pragma once
/// \file
/// Reference image models: a CNN teacher and a depthwise-separable CNN student
/// (the benchmark workload W1's pair, with sizes as options).

#include <torch/arg.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "kd/core/model.h"
#include "kd/nn/linear.h"
#include "kd/quant/fake_quantize.h"

namespace kd::models {

/// Spatial self-attention of a feature map, so attention transfer
/// (kd::AttentionMSE) applies to CNNs whose channel counts differ:
///
///   A = softmax_j( f_iᵀ f_j / √C ),   f = x.flatten(2) ∈ [B, C, N], N = H·W,
///
/// returned as one "head" [B, 1, N, N]; row i is where position i attends.
///
/// Example: `auto a = kd::models::spatial_attention(torch::randn({2, 16, 7, 7}));   // [2, 1, 49, 49]`
torch::Tensor spatial_attention(const torch::Tensor& features);

/// Options for CnnTeacher.
struct CnnTeacherOptions {
  TORCH_ARG(int64_t, in_channels) = 1;
  TORCH_ARG(int64_t, image_size) = 28;   ///< square inputs, divisible by 4
  TORCH_ARG(int64_t, width1) = 32;       ///< channels of the first two convs
  TORCH_ARG(int64_t, width2) = 64;       ///< channels of the last two convs
  TORCH_ARG(int64_t, hidden) = 256;      ///< width of the fully connected layer
  TORCH_ARG(int64_t, num_classes) = 10;
  /// Also return spatial_attention() of each hidden state in `attentions`.
  TORCH_ARG(bool, attention_maps) = true;
  /// Register activation quantization points (kd::qat::FakeQuantize placeholders, identities
  /// until kd::qat::prepare() enables them) at the input of every conv and linear layer:
  /// "act_in", "act_conv2", "act_conv3", "act_conv4", "act_fc1", "act_fc2". Off by default, so
  /// the state dict stays that of the plain model.
  TORCH_ARG(bool, activation_quant) = false;
};

/// conv(in→w1)-BN-ReLU, conv(w1→w1)-BN-ReLU, maxpool2, conv(w1→w2)-BN-ReLU,
/// conv(w2→w2)-BN-ReLU, maxpool2, flatten, linear(→hidden)-ReLU, linear(→classes);
/// all convs 3×3, padding 1. With defaults: 0.87 M parameters. The linear layers are
/// kd::nn::Linear, so kd::lora attaches real adapters to them (LoRA dropout works).
///
/// hidden_states: [0] after the first pool [B, w1, S/2, S/2], [1] after the
/// second pool [B, w2, S/4, S/4]; attentions (when `attention_maps`): their
/// spatial_attention(), [B, 1, S²/4, S²/4] and [B, 1, S²/16, S²/16].
///
/// Example: `kd::models::CnnTeacher t(kd::models::CnnTeacherOptions().num_classes(10));`
class CnnTeacherImpl : public Model {
 public:
  explicit CnnTeacherImpl(CnnTeacherOptions options = {});
  ModelOutput forward(const torch::Tensor& inputs) override;

  CnnTeacherOptions options;

 private:
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr}, conv4{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr}, bn3{nullptr}, bn4{nullptr};
  kd::nn::Linear fc1{nullptr}, fc2{nullptr};  // kd::nn::Linear: LoRA can attach real adapters (dropout)
  // Activation quantization points (options.activation_quant); identities when null.
  qat::FakeQuantize act_in{nullptr}, act_conv2{nullptr}, act_conv3{nullptr}, act_conv4{nullptr}, act_fc1{nullptr},
      act_fc2{nullptr};
};
TORCH_MODULE(CnnTeacher);

/// Options for DepthwiseCnnStudent.
struct DepthwiseCnnStudentOptions {
  TORCH_ARG(int64_t, in_channels) = 1;
  TORCH_ARG(int64_t, image_size) = 28;
  TORCH_ARG(int64_t, width1) = 16;   ///< channels of the first conv (and the depthwise conv)
  TORCH_ARG(int64_t, width2) = 32;   ///< channels after the pointwise conv
  TORCH_ARG(int64_t, num_classes) = 10;
  /// Also return spatial_attention() of each hidden state in `attentions`.
  TORCH_ARG(bool, attention_maps) = true;
  /// Register activation quantization points at the input of every conv and linear layer:
  /// "act_in", "act_depthwise", "act_pointwise", "act_fc" (see CnnTeacherOptions::activation_quant).
  TORCH_ARG(bool, activation_quant) = false;
};

/// conv(in→w1)-BN-ReLU, maxpool2, depthwise 3×3 (w1, groups w1) + pointwise
/// 1×1 (w1→w2)-BN-ReLU, maxpool2, flatten, linear(→classes).
/// With defaults: 16.9 K parameters (about 2% of the default teacher).
///
/// hidden_states: [0] after the first pool [B, w1, S/2, S/2], [1] after the
/// second pool [B, w2, S/4, S/4]; attentions (when `attention_maps`): their
/// spatial_attention(), [B, 1, S²/4, S²/4] and [B, 1, S²/16, S²/16].
class DepthwiseCnnStudentImpl : public Model {
 public:
  explicit DepthwiseCnnStudentImpl(DepthwiseCnnStudentOptions options = {});
  ModelOutput forward(const torch::Tensor& inputs) override;

  DepthwiseCnnStudentOptions options;

 private:
  torch::nn::Conv2d conv1{nullptr}, depthwise{nullptr}, pointwise{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  kd::nn::Linear fc{nullptr};
  qat::FakeQuantize act_in{nullptr}, act_depthwise{nullptr}, act_pointwise{nullptr}, act_fc{nullptr};
};
TORCH_MODULE(DepthwiseCnnStudent);

}  // namespace kd::models
