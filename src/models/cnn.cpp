#include "kd/models/cnn.h"

#include <cmath>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"

namespace kd::models {
namespace {

torch::nn::Conv2d conv3x3(int64_t in, int64_t out, int64_t groups = 1) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1).groups(groups));
}

void check_input(const torch::Tensor& x, int64_t channels, int64_t size, const char* model) {
  if (x.dim() != 4 || x.size(1) != channels || x.size(2) != size || x.size(3) != size) {
    throw Error(ErrorCategory::kShape,
                fmt::format("{} expects images [B, {}, {}, {}], got {}", model, channels, size, size,
                            shape_string(x)));
  }
}

void check_size(int64_t image_size) {
  if (image_size <= 0 || image_size % 4 != 0) {
    throw Error(ErrorCategory::kValue,
                fmt::format("image_size must be a positive multiple of 4 (two 2x2 pools), got {}", image_size));
  }
}

// A quantization point: the placeholder when the model has one, else the identity.
torch::Tensor point(qat::FakeQuantize& q, const torch::Tensor& x) { return q ? q->forward(x) : x; }

qat::FakeQuantize add_point(torch::nn::Module& m, bool enabled, const std::string& name) {
  return enabled ? m.register_module(name, qat::FakeQuantize()) : qat::FakeQuantize(nullptr);
}

void add_attention_maps(ModelOutput& out) {
  for (const auto& h : out.hidden_states) out.attentions.push_back(spatial_attention(h));
}

}  // namespace

torch::Tensor spatial_attention(const torch::Tensor& features) {
  if (features.dim() != 4) {
    throw Error(ErrorCategory::kShape,
                fmt::format("spatial_attention expects features [B, C, H, W], got {}", shape_string(features)));
  }
  const auto f = features.flatten(2);  // [B, C, N]
  const double scale = 1.0 / std::sqrt(static_cast<double>(features.size(1)));
  return torch::softmax(torch::bmm(f.transpose(1, 2), f) * scale, -1).unsqueeze(1);
}

CnnTeacherImpl::CnnTeacherImpl(CnnTeacherOptions options_) : options(options_) {
  check_size(options.image_size());
  const auto w1 = options.width1(), w2 = options.width2();
  conv1 = register_module("conv1", conv3x3(options.in_channels(), w1));
  bn1 = register_module("bn1", torch::nn::BatchNorm2d(w1));
  conv2 = register_module("conv2", conv3x3(w1, w1));
  bn2 = register_module("bn2", torch::nn::BatchNorm2d(w1));
  conv3 = register_module("conv3", conv3x3(w1, w2));
  bn3 = register_module("bn3", torch::nn::BatchNorm2d(w2));
  conv4 = register_module("conv4", conv3x3(w2, w2));
  bn4 = register_module("bn4", torch::nn::BatchNorm2d(w2));
  const int64_t s = options.image_size() / 4;
  fc1 = register_module("fc1", kd::nn::Linear(w2 * s * s, options.hidden()));
  fc2 = register_module("fc2", kd::nn::Linear(options.hidden(), options.num_classes()));
  const bool q = options.activation_quant();
  act_in = add_point(*this, q, "act_in");
  act_conv2 = add_point(*this, q, "act_conv2");
  act_conv3 = add_point(*this, q, "act_conv3");
  act_conv4 = add_point(*this, q, "act_conv4");
  act_fc1 = add_point(*this, q, "act_fc1");
  act_fc2 = add_point(*this, q, "act_fc2");
}

ModelOutput CnnTeacherImpl::forward(const torch::Tensor& inputs) {
  check_input(inputs, options.in_channels(), options.image_size(), "CnnTeacher");
  ModelOutput out;
  auto x = torch::relu(bn1->forward(conv1->forward(point(act_in, inputs))));
  x = torch::max_pool2d(torch::relu(bn2->forward(conv2->forward(point(act_conv2, x)))), 2);
  out.hidden_states.push_back(x);
  x = torch::relu(bn3->forward(conv3->forward(point(act_conv3, x))));
  x = torch::max_pool2d(torch::relu(bn4->forward(conv4->forward(point(act_conv4, x)))), 2);
  out.hidden_states.push_back(x);
  out.logits = fc2->forward(point(act_fc2, torch::relu(fc1->forward(point(act_fc1, x.flatten(1))))));
  if (options.attention_maps()) add_attention_maps(out);
  return out;
}

DepthwiseCnnStudentImpl::DepthwiseCnnStudentImpl(DepthwiseCnnStudentOptions options_) : options(options_) {
  check_size(options.image_size());
  const auto w1 = options.width1(), w2 = options.width2();
  conv1 = register_module("conv1", conv3x3(options.in_channels(), w1));
  bn1 = register_module("bn1", torch::nn::BatchNorm2d(w1));
  depthwise = register_module("depthwise", conv3x3(w1, w1, /*groups=*/w1));
  pointwise = register_module("pointwise", torch::nn::Conv2d(torch::nn::Conv2dOptions(w1, w2, 1)));
  bn2 = register_module("bn2", torch::nn::BatchNorm2d(w2));
  const int64_t s = options.image_size() / 4;
  fc = register_module("fc", kd::nn::Linear(w2 * s * s, options.num_classes()));
  const bool q = options.activation_quant();
  act_in = add_point(*this, q, "act_in");
  act_depthwise = add_point(*this, q, "act_depthwise");
  act_pointwise = add_point(*this, q, "act_pointwise");
  act_fc = add_point(*this, q, "act_fc");
}

ModelOutput DepthwiseCnnStudentImpl::forward(const torch::Tensor& inputs) {
  check_input(inputs, options.in_channels(), options.image_size(), "DepthwiseCnnStudent");
  ModelOutput out;
  auto x = torch::max_pool2d(torch::relu(bn1->forward(conv1->forward(point(act_in, inputs)))), 2);
  out.hidden_states.push_back(x);
  x = point(act_pointwise, depthwise->forward(point(act_depthwise, x)));
  x = torch::max_pool2d(torch::relu(bn2->forward(pointwise->forward(x))), 2);
  out.hidden_states.push_back(x);
  out.logits = fc->forward(point(act_fc, x.flatten(1)));
  if (options.attention_maps()) add_attention_maps(out);
  return out;
}

}  // namespace kd::models
