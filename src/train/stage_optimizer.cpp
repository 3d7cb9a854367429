#include "stage_optimizer.h"

#include <algorithm>
#include <regex>
#include <string>

#include <fmt/format.h>

#include "kd/core/error.h"

namespace kd::detail {
namespace {

std::vector<std::regex> compile_patterns(const Stage& stage, const std::vector<std::string>& patterns,
                                         const std::string& what) {
  std::vector<std::regex> out;
  for (const auto& p : patterns) {
    try {
      out.emplace_back(p);
    } catch (const std::regex_error& e) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("stage '{}': {} pattern '{}' is not a valid regex ({})", stage.name(), what, p, e.what()));
    }
  }
  return out;
}

}  // namespace

std::vector<torch::Tensor> select_trainable(torch::nn::Module& student, const Stage& stage) {
  const auto patterns = compile_patterns(stage, stage.trainable(), "trainable");
  std::vector<torch::Tensor> out;
  for (auto& item : student.named_parameters()) {
    bool on = patterns.empty();
    for (const auto& re : patterns) on = on || std::regex_search(item.key(), re);
    item.value().requires_grad_(on);
    if (on) out.push_back(item.value());
  }
  if (out.empty()) {
    throw Error(ErrorCategory::kValue,
                fmt::format("stage '{}': no student parameter matches the trainable patterns; names look like '{}'",
                            stage.name(), student.named_parameters().is_empty() ? "" : student.named_parameters()[0].key()));
  }
  return out;
}

std::unique_ptr<torch::optim::Optimizer> make_stage_optimizer(const StagedTrainerOptions& o, const Stage& stage,
                                                              torch::nn::Module& student,
                                                              const std::vector<torch::Tensor>& hook_params,
                                                              std::vector<torch::Tensor> loss_params,
                                                              std::vector<double>& base_lrs) {
  const auto& specs = stage.param_groups();
  std::vector<std::vector<std::regex>> patterns;
  for (size_t g = 0; g < specs.size(); ++g) {
    if (!(specs[g].lr > 0)) {
      throw Error(ErrorCategory::kValue, fmt::format("stage '{}': param_groups[{}] needs lr > 0 (got {})", stage.name(),
                                                     g, specs[g].lr));
    }
    patterns.push_back(compile_patterns(stage, specs[g].patterns, fmt::format("param_groups[{}]", g)));
  }
  std::vector<std::vector<torch::Tensor>> grouped(specs.size());
  std::vector<torch::Tensor> rest;
  for (auto& item : student.named_parameters()) {
    if (!item.value().requires_grad()) continue;
    size_t g = 0;
    for (; g < specs.size(); ++g) {
      if (std::any_of(patterns[g].begin(), patterns[g].end(),
                      [&](const std::regex& re) { return std::regex_search(item.key(), re); })) {
        break;
      }
    }
    (g < specs.size() ? grouped[g] : rest).push_back(item.value());
  }
  for (const auto& p : hook_params) rest.push_back(p);
  if (rest.empty() && std::all_of(grouped.begin(), grouped.end(), [](const auto& v) { return v.empty(); })) {
    throw Error(ErrorCategory::kValue, fmt::format("stage '{}': nothing left to train after its hooks", stage.name()));
  }

  const bool sgd = o.optimizer() == OptimizerKind::kSgd;
  auto options_for = [&](double lr, double weight_decay) -> std::unique_ptr<torch::optim::OptimizerOptions> {
    if (sgd) {
      return std::make_unique<torch::optim::SGDOptions>(
          torch::optim::SGDOptions(lr).momentum(o.momentum()).nesterov(o.nesterov()).weight_decay(weight_decay));
    }
    return std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(lr).weight_decay(weight_decay));
  };
  base_lrs.clear();
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (size_t g = 0; g < specs.size(); ++g) {
    if (grouped[g].empty()) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("stage '{}': param_groups[{}] matches no trainable student parameter", stage.name(), g));
    }
    groups.emplace_back(std::move(grouped[g]),
                        options_for(specs[g].lr, specs[g].weight_decay < 0 ? o.weight_decay() : specs[g].weight_decay));
    base_lrs.push_back(specs[g].lr);
  }
  if (!rest.empty()) {
    groups.emplace_back(std::move(rest), options_for(stage.lr(), o.weight_decay()));
    base_lrs.push_back(stage.lr());
  }
  if (!loss_params.empty()) {
    const double loss_lr = stage.loss_lr() < 0 ? stage.lr() : stage.loss_lr();
    groups.emplace_back(std::move(loss_params), options_for(loss_lr, o.weight_decay()));
    base_lrs.push_back(loss_lr);
  }
  if (sgd) {
    if (o.nesterov() && !(o.momentum() > 0)) {
      throw Error(ErrorCategory::kValue, fmt::format("SGD with Nesterov momentum needs momentum > 0 (got {})", o.momentum()));
    }
    return std::make_unique<torch::optim::SGD>(groups, torch::optim::SGDOptions(stage.lr()).momentum(o.momentum()));
  }
  return std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(stage.lr()));
}

}  // namespace kd::detail
