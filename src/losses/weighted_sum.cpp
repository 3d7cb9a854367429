#include "kd/losses/weighted_sum.h"

#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include "kd/core/error.h"

namespace kd {
WeightedSumImpl::WeightedSumImpl(std::vector<WeightedTerm> terms, AnyWeighting weighting)
    : terms_(std::move(terms)), weighting_(std::move(weighting)) {
  reset();
}

void WeightedSumImpl::check_term(const WeightedTerm& term, size_t index) const {
  const auto& n = term.name;
  if (n.empty() || n.find('.') != std::string::npos || n == "w" || n == "weighting") {
    throw Error(ErrorCategory::kConfig,
                fmt::format("WeightedSum: term {} has the invalid name '{}'; a name must be non-empty, contain "
                            "no '.', and not be \"w\" or \"weighting\" (reserved for weight parts)",
                            index, n));
  }
  for (size_t j = 0; j < index; ++j) {
    if (terms_[j].name == n) {
      throw Error(ErrorCategory::kConfig,
                  fmt::format("WeightedSum: terms {} and {} are both named '{}'; names must be unique", j, index, n));
    }
  }
  if (term.loss.is_empty()) {
    throw Error(ErrorCategory::kConfig, fmt::format("WeightedSum: term '{}' has no loss module", n));
  }
}

void WeightedSumImpl::check_policy_size() const {
  if (!weighting_) return;
  const int64_t k = weighting_->num_losses();
  if (k >= 0 && !terms_.empty() && k != static_cast<int64_t>(terms_.size())) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("WeightedSum: the weighting policy {} was built for {} losses but the sum has {} ({}); "
                            "build it with num_losses = {}",
                            weighting_.module()->name(), k, terms_.size(), fmt::join(names(), ", "),
                            terms_.size()));
  }
}

void WeightedSumImpl::reset() {
  const auto children = named_children();
  for (size_t i = 0; i < terms_.size(); ++i) {
    check_term(terms_[i], i);
    if (children.contains(terms_[i].name)) {
      replace_module(terms_[i].name, terms_[i].loss.ptr());
    } else {
      register_module(terms_[i].name, terms_[i].loss.ptr());
    }
  }
  if (weighting_) {
    if (children.contains("weighting")) replace_module("weighting", weighting_.module());
    else register_module("weighting", weighting_.module());
  }
  check_policy_size();
}

void WeightedSumImpl::add(WeightedTerm term) {
  terms_.push_back(std::move(term));
  try {
    check_term(terms_.back(), terms_.size() - 1);
  } catch (...) {
    terms_.pop_back();
    throw;
  }
  register_module(terms_.back().name, terms_.back().loss.ptr());
}

std::vector<std::string> WeightedSumImpl::names() const {
  std::vector<std::string> out;
  for (const auto& t : terms_) out.push_back(t.name);
  return out;
}

AnyLoss& WeightedSumImpl::loss(const std::string& name) {
  for (auto& t : terms_) {
    if (t.name == name) return t.loss;
  }
  throw Error(ErrorCategory::kConfig,
              fmt::format("WeightedSum has no loss named '{}'; it has: {}", name, fmt::join(names(), ", ")));
}

bool WeightedSumImpl::needs_input_grad() const {
  for (const auto& t : terms_) {
    if (t.loss.needs_input_grad()) return true;
  }
  return false;
}

void WeightedSumImpl::pretty_print(std::ostream& stream) const {
  stream << "kd::WeightedSum(";
  for (size_t k = 0; k < terms_.size(); ++k) {
    stream << (k ? ", " : "") << terms_[k].name << ": " << terms_[k].weight.describe();
  }
  if (weighting_) stream << "; weighting: " << weighting_.module()->name();
  stream << ")";
}

std::shared_ptr<torch::nn::Module> WeightedSumImpl::clone(const c10::optional<torch::Device>& device) const {
  std::vector<WeightedTerm> terms;
  for (const auto& t : terms_) terms.emplace_back(t.name, t.loss.clone(device), t.weight);
  auto copy = std::make_shared<WeightedSumImpl>(std::move(terms), weighting_.clone(device));
  copy->train(is_training());
  return copy;
}

namespace {

// A sub-loss's part keeps its key when it already carries the term's name.
std::string part_key(const std::string& term, const std::string& part) {
  if (part == term || part.rfind(term + ".", 0) == 0) return part;
  return term + "." + part;
}

// The count the terms that report one agree on (terms without one follow it); unset when none reports one or
// two disagree (token terms beside a term over labelled examples only), so that the trainer weighs by examples.
std::optional<double> common_count(const std::vector<LossResult>& results) {
  std::optional<double> count;
  for (const auto& r : results) {
    if (!r.count) continue;
    if (count && *count != *r.count) return std::nullopt;
    count = r.count;
  }
  return count;
}

}  // namespace

LossResult WeightedSumImpl::forward(const DistillBatch& batch) {
  if (terms_.empty()) {
    throw Error(ErrorCategory::kState, "WeightedSum::forward: the sum has no losses; construct it with terms or add()");
  }
  check_policy_size();
  const size_t K = terms_.size();
  const double progress = batch.step.progress;

  std::vector<LossResult> results;
  results.reserve(K);
  std::vector<double> c(K);
  for (size_t k = 0; k < K; ++k) {
    auto& term = terms_[k];
    try {
      results.push_back(term.loss.forward(batch));
    } catch (const Error& e) {
      throw Error(e.category(), fmt::format("loss '{}': {}", term.name, e.message()));
    }
    const auto& total = results.back().total;
    if (!total.defined() || total.numel() != 1) {
      throw Error(ErrorCategory::kShape,
                  fmt::format("WeightedSum: loss '{}' returned a total of shape {}; a loss's total must be a scalar",
                              term.name, total.defined() ? shape_string(total) : std::string("(undefined)")));
    }
    c[k] = term.weight(progress);
    if (!std::isfinite(c[k])) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("WeightedSum: the weight of loss '{}' is {} at progress {} ({})", term.name, c[k],
                              progress, term.weight.describe()));
    }
  }

  // A non-finite term makes the total non-finite, and the trainer's non-finite policy decides what the
  // step becomes; the weighting policy is not asked, so its state never learns from NaN or Inf.
  std::vector<torch::Tensor> detached;
  for (const auto& r : results) detached.push_back(r.total.detach().reshape({}).to(torch::kFloat64));
  const bool finite = torch::isfinite(torch::stack(detached)).all().item<bool>();  // one host sync for all K

  LossResult out;
  std::vector<double> w(c);
  if (!weighting_ || !finite) {
    for (size_t k = 0; k < K; ++k) {
      auto term = results[k].total.reshape({}) * c[k];
      out.total = out.total.defined() ? out.total + term : term;
    }
  } else {
    std::vector<torch::Tensor> scaled;
    for (size_t k = 0; k < K; ++k) scaled.push_back(results[k].total.reshape({}) * c[k]);
    WeightingContext context(batch.step);
    context.batch = &batch;
    for (const auto& t : terms_) context.modules.push_back(t.loss.ptr());
    WeightingResult combined;
    try {
      combined = weighting_->combine(scaled, names(), context);
    } catch (const Error& e) {
      throw Error(e.category(), fmt::format("weighting policy {}: {}", weighting_.module()->name(), e.message()));
    }
    if (!combined.total.defined() || combined.total.numel() != 1 || !combined.weights.defined() ||
        combined.weights.numel() != static_cast<int64_t>(K)) {
      throw Error(ErrorCategory::kShape,
                  fmt::format("WeightedSum: policy {} returned total {} and weights {}; expected a scalar and [{}]",
                              weighting_.module()->name(),
                              combined.total.defined() ? shape_string(combined.total) : std::string("(undefined)"),
                              combined.weights.defined() ? shape_string(combined.weights) : std::string("(undefined)"),
                              K));
    }
    out.total = combined.total.reshape({});
    const auto pw = combined.weights.detach().reshape({-1}).to(torch::kCPU, torch::kFloat64).contiguous();
    const auto* pw_data = pw.data_ptr<double>();
    for (size_t k = 0; k < K; ++k) w[k] = c[k] * pw_data[k];
    for (auto& [key, v] : combined.parts) out.parts["weighting." + key] = v.detach();
  }

  for (size_t k = 0; k < K; ++k) {
    const auto& name = terms_[k].name;
    for (const auto& [key, v] : results[k].parts) out.parts[part_key(name, key)] = v.detach();
    out.parts[name] = results[k].total.detach().reshape({});
    out.parts["w." + name] = torch::scalar_tensor(w[k], torch::kFloat64);
  }
  out.count = common_count(results);
  return out;
}

}  // namespace kd
