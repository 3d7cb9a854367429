#include "kd/losses/weighting/min_norm.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <Eigen/Dense>
#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/model_output.h"

namespace kd {
namespace functional {
namespace {

using Eigen::MatrixXd;
using Eigen::VectorXd;

double objective(const MatrixXd& G, const VectorXd& a) { return a.dot(G * a); }

// min over γ ∈ [0, 1] of ‖γ g_i + (1 − γ) g_j‖²; returns γ.
double pair_gamma(double gii, double gij, double gjj) {
  const double denom = gii + gjj - 2.0 * gij;  // ‖g_i − g_j‖²
  if (!(denom > 1e-300)) return 0.5;            // g_i = g_j: every γ is optimal
  return std::clamp((gjj - gij) / denom, 0.0, 1.0);
}

VectorXd best_pair(const MatrixXd& G) {
  const int64_t K = G.rows();
  VectorXd best = VectorXd::Zero(K);
  double best_value = std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < K; ++i) {
    for (int64_t j = i + 1; j < K; ++j) {
      const double g = pair_gamma(G(i, i), G(i, j), G(j, j));
      VectorXd a = VectorXd::Zero(K);
      a(i) = g;
      a(j) = 1.0 - g;
      const double v = objective(G, a);
      if (v < best_value) {
        best_value = v;
        best = a;
      }
    }
  }
  return best;
}

VectorXd solve_exact(const MatrixXd& G) {
  const int64_t K = G.rows();
  VectorXd best = VectorXd::Constant(K, 1.0 / K);
  double best_value = objective(G, best);
  for (uint64_t mask = 1; mask < (uint64_t{1} << K); ++mask) {
    std::vector<int64_t> S;
    for (int64_t i = 0; i < K; ++i) {
      if (mask & (uint64_t{1} << i)) S.push_back(i);
    }
    const int64_t n = static_cast<int64_t>(S.size());
    // KKT of min αᵀGα s.t. 1ᵀα = 1 on the face S: [2G_SS 1; 1ᵀ 0][α; μ] = [0; 1].
    MatrixXd M = MatrixXd::Zero(n + 1, n + 1);
    for (int64_t a = 0; a < n; ++a) {
      for (int64_t b = 0; b < n; ++b) M(a, b) = 2.0 * G(S[a], S[b]);
      M(a, n) = 1.0;
      M(n, a) = 1.0;
    }
    VectorXd rhs = VectorXd::Zero(n + 1);
    rhs(n) = 1.0;
    Eigen::FullPivLU<MatrixXd> lu(M);
    lu.setThreshold(1e-12);
    if (!lu.isInvertible()) continue;  // affinely dependent gradients: another face has the optimum
    const VectorXd x = lu.solve(rhs);
    if (!x.allFinite() || (x.head(n).array() < -1e-12).any()) continue;
    VectorXd a = VectorXd::Zero(K);
    for (int64_t i = 0; i < n; ++i) a(S[i]) = std::max(0.0, x(i));
    const double sum = a.sum();
    if (!(sum > 0)) continue;
    a /= sum;
    const double v = objective(G, a);
    if (v < best_value) {
      best_value = v;
      best = a;
    }
  }
  return best;
}

VectorXd solve_frank_wolfe(const MatrixXd& G, int64_t max_iterations, double tolerance) {
  VectorXd a = best_pair(G);
  for (int64_t it = 0; it < max_iterations; ++it) {
    const VectorXd Ga = G * a;
    Eigen::Index t = 0;
    Ga.minCoeff(&t);
    const double v1v1 = a.dot(Ga), v1v2 = Ga(t), v2v2 = G(t, t);
    const double gamma = 1.0 - pair_gamma(v1v1, v1v2, v2v2);  // weight on e_t
    VectorXd next = (1.0 - gamma) * a;
    next(t) += gamma;
    const double change = (next - a).cwiseAbs().sum();
    a = next;
    if (change < tolerance) break;
  }
  return a;
}

}  // namespace

torch::Tensor min_norm_weights(const torch::Tensor& gram, MinNormSolver solver, int64_t max_iterations,
                               double tolerance) {
  if (!gram.defined() || gram.dim() != 2 || gram.size(0) != gram.size(1) || gram.size(0) < 1) {
    throw Error(ErrorCategory::kShape,
                fmt::format("min_norm_weights: the Gram matrix must be square [K, K] with K >= 1, got {}",
                            gram.defined() ? shape_string(gram) : std::string("(undefined)")));
  }
  const auto g = gram.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  if (!torch::isfinite(g).all().item<bool>()) {
    throw Error(ErrorCategory::kValue, "min_norm_weights: the Gram matrix contains NaN or Inf (non-finite gradients?)");
  }
  const int64_t K = g.size(0);
  MatrixXd G = Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
      g.data_ptr<double>(), K, K);
  G = 0.5 * (G + G.transpose());
  // α is invariant to scaling G; normalising keeps the KKT systems' pivots O(1).
  const double scale = G.diagonal().maxCoeff();
  VectorXd a;
  if (K == 1) {
    a = VectorXd::Ones(1);
  } else if (!(scale > 0)) {
    a = VectorXd::Constant(K, 1.0 / K);  // all gradients zero: any α is optimal
  } else {
    G /= scale;
    if (solver == MinNormSolver::kAuto) {
      solver = K > 12 ? MinNormSolver::kFrankWolfe : MinNormSolver::kExact;
      if (K == 2) {
        const double gamma = pair_gamma(G(0, 0), G(0, 1), G(1, 1));
        a = VectorXd(2);
        a << gamma, 1.0 - gamma;
      }
    }
    if (a.size() == 0) {
      a = solver == MinNormSolver::kFrankWolfe ? solve_frank_wolfe(G, max_iterations, tolerance) : solve_exact(G);
    }
  }
  auto out = torch::empty({K}, torch::kFloat64);
  for (int64_t i = 0; i < K; ++i) out[i] = a(i);
  return out;
}

}  // namespace functional

MinNormWeightingImpl::MinNormWeightingImpl(MinNormWeightingOptions options_) : options(std::move(options_)) {
  reset();
}

void MinNormWeightingImpl::reset() {
  if (options.shared_parameters().empty()) {
    throw Error(ErrorCategory::kConfig,
                "MinNormWeightingOptions.shared_parameters is empty; pass the parameters all losses share "
                "(e.g. the student's parameters())");
  }
  for (size_t i = 0; i < options.shared_parameters().size(); ++i) {
    if (!options.shared_parameters()[i].defined()) {
      throw Error(ErrorCategory::kConfig, fmt::format("MinNormWeightingOptions.shared_parameters[{}] is undefined", i));
    }
  }
  if (options.max_iterations() < 1) {
    throw Error(ErrorCategory::kValue,
                fmt::format("MinNormWeightingOptions.max_iterations must be >= 1, got {}", options.max_iterations()));
  }
}

torch::Tensor MinNormWeightingImpl::gram(const std::vector<torch::Tensor>& losses) const {
  std::vector<torch::Tensor> params;
  for (const auto& p : options.shared_parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }
  if (params.empty()) {
    throw Error(ErrorCategory::kConfig,
                fmt::format("MinNormWeighting: none of the {} shared parameters requires grad",
                            options.shared_parameters().size()));
  }
  const int64_t K = static_cast<int64_t>(losses.size());
  // grads[k][p]: ∂L_k/∂θ_p, or undefined where L_k does not reach θ_p.
  std::vector<std::vector<torch::Tensor>> grads(K);
  for (int64_t k = 0; k < K; ++k) {
    if (!losses[k].requires_grad()) {
      grads[k].resize(params.size());
      continue;
    }
    grads[k] = torch::autograd::grad({losses[k].reshape({})}, params, /*grad_outputs=*/{}, /*retain_graph=*/true,
                                     /*create_graph=*/false, /*allow_unused=*/true);
  }
  auto G = torch::zeros({K, K}, torch::kFloat64);
  for (size_t p = 0; p < params.size(); ++p) {
    std::vector<torch::Tensor> rows;
    bool any = false;
    for (int64_t k = 0; k < K; ++k) {
      const auto& g = grads[k][p];
      any = any || g.defined();
      rows.push_back(g.defined() ? g.detach().reshape({-1}).to(torch::kFloat64)
                                 : torch::zeros({params[p].numel()}, params[p].options().dtype(torch::kFloat64)));
    }
    if (!any) continue;
    const auto M = torch::stack(rows);  // [K, n_p]
    G += torch::mm(M, M.t()).cpu();
  }
  return G;
}

WeightingResult MinNormWeightingImpl::combine(const std::vector<torch::Tensor>& losses,
                                              const std::vector<std::string>& names, const WeightingContext& context) {
  const int64_t K = static_cast<int64_t>(losses.size());
  bool differentiable = torch::GradMode::is_enabled();
  if (differentiable) {
    differentiable = std::any_of(losses.begin(), losses.end(), [](const torch::Tensor& l) { return l.requires_grad(); });
  }
  WeightingResult r;
  torch::Tensor alpha;
  if (differentiable) {
    const auto G = gram(losses);
    alpha = functional::min_norm_weights(G, options.solver(), options.max_iterations(), options.tolerance());
    last_alpha_ = alpha;
    r.parts["min_norm"] = torch::dot(alpha, torch::mv(G, alpha));
  } else if (last_alpha_.defined() && last_alpha_.numel() == K) {
    alpha = last_alpha_;
  } else {
    alpha = torch::full({K}, 1.0 / static_cast<double>(K), torch::kFloat64);
  }
  const auto* a = alpha.data_ptr<double>();
  for (int64_t k = 0; k < K; ++k) {
    auto term = losses[k].reshape({}) * a[k];
    r.total = r.total.defined() ? r.total + term : term;
  }
  r.weights = alpha;
  return r;
}

}  // namespace kd
