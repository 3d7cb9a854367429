#include "frozen_cnn.h"

#include <torch/torch.h>

namespace kd::bench {

FoldedConv fold_batchnorm(const torch::Tensor& weight, const torch::Tensor& bias, const torch::Tensor& running_mean,
                          const torch::Tensor& running_var, const torch::Tensor& gamma, const torch::Tensor& beta,
                          double eps) {
  torch::NoGradGuard no_grad;
  const auto s = gamma / torch::sqrt(running_var + eps);
  const auto b = bias.defined() ? bias : torch::zeros_like(running_mean);
  return {weight * s.view({-1, 1, 1, 1}), (b - running_mean) * s + beta};
}

FrozenCnnTeacherImpl::FrozenCnnTeacherImpl(models::CnnTeacherImpl& teacher, bool channels_last, bool mkldnn)
    : channels_last_(channels_last), mkldnn_(mkldnn) {
  const auto params = teacher.named_parameters();
  const auto buffers = teacher.named_buffers();
  auto fold = [&](int i) {
    const auto c = "conv" + std::to_string(i), n = "bn" + std::to_string(i);
    auto f = fold_batchnorm(params[c + ".weight"], params[c + ".bias"], buffers[n + ".running_mean"],
                            buffers[n + ".running_var"], params[n + ".weight"], params[n + ".bias"],
                            torch::nn::BatchNorm2dOptions(1).eps());
    if (channels_last_) f.weight = f.weight.contiguous(at::MemoryFormat::ChannelsLast);
    register_buffer(c + "_weight", f.weight);
    register_buffer(c + "_bias", f.bias);
    return f;
  };
  c1_ = fold(1), c2_ = fold(2), c3_ = fold(3), c4_ = fold(4);
  torch::NoGradGuard no_grad;
  fc1_w_ = register_buffer("fc1_weight", params["fc1.weight"].detach().clone());
  fc1_b_ = register_buffer("fc1_bias", params["fc1.bias"].detach().clone());
  fc2_w_ = register_buffer("fc2_weight", params["fc2.weight"].detach().clone());
  fc2_b_ = register_buffer("fc2_bias", params["fc2.bias"].detach().clone());
  if (mkldnn_) {
    auto blocked = [](const FoldedConv& c) {
      return FoldedConv{at::mkldnn_reorder_conv2d_weight(c.weight.contiguous().to_mkldnn(), {1, 1}, {1, 1}, {1, 1}, 1),
                        c.bias};
    };
    m1_ = blocked(c1_), m2_ = blocked(c2_), m3_ = blocked(c3_), m4_ = blocked(c4_);
  }
}

ModelOutput FrozenCnnTeacherImpl::forward(const torch::Tensor& images) {
  if (mkldnn_) {
    auto conv = [](const torch::Tensor& x, const FoldedConv& c) {
      return at::mkldnn_convolution(x, c.weight, c.bias, {1, 1}, {1, 1}, {1, 1}, 1).relu_();
    };
    auto x = torch::max_pool2d(conv(conv(images.contiguous().to_mkldnn(), m1_), m2_), 2);
    ModelOutput out;
    out.hidden_states.push_back(x.to_dense());
    const auto h = torch::max_pool2d(conv(conv(x, m3_), m4_), 2).to_dense();
    out.hidden_states.push_back(h);
    out.logits = torch::addmm(fc2_b_, torch::addmm(fc1_b_, h.flatten(1), fc1_w_.t()).relu_(), fc2_w_.t());
    return out;
  }
  // 3×3, stride 1, padding 1 everywhere; ReLU in place: nothing keeps the pre-activation.
  auto conv = [](const torch::Tensor& x, const FoldedConv& c) { return torch::conv2d(x, c.weight, c.bias, 1, 1).relu_(); };
  auto x = channels_last_ ? images.contiguous(at::MemoryFormat::ChannelsLast) : images;
  x = torch::max_pool2d(conv(conv(x, c1_), c2_), 2);
  ModelOutput out;
  out.hidden_states.push_back(x.contiguous());
  x = torch::max_pool2d(conv(conv(x, c3_), c4_), 2).contiguous();
  out.hidden_states.push_back(x);
  out.logits = torch::addmm(fc2_b_, torch::addmm(fc1_b_, x.flatten(1), fc1_w_.t()).relu_(), fc2_w_.t());
  return out;
}

}  // namespace kd::bench
