// RoPE against its closed form: pair i of position p turns by p·base^(−2i/d).
#include <cmath>

#include <gtest/gtest.h>

#include "kd/core/error.h"
#include "kd/models/rope.h"

namespace {
using namespace kd::models;
const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);

TEST(Rope, TurnsEachPairByPositionTimesItsFrequency) {
  // d = 4, base 100: θ₀ = 1, θ₁ = 100^(−1/2) = 0.1; pairs are (x₀, x₂) and (x₁, x₃).
  const auto x = torch::tensor({1.0, 2.0, 3.0, -1.0}, f64).repeat({6, 1});  // positions 0..5
  const auto y = apply_rotary(x, rotary_tables(6, 4, 100.0, f64));
  for (int p = 0; p < 6; ++p) {
    const double a0 = p * 1.0, a1 = p * 0.1;
    const double expect[4] = {1.0 * std::cos(a0) - 3.0 * std::sin(a0), 2.0 * std::cos(a1) - (-1.0) * std::sin(a1),
                              1.0 * std::sin(a0) + 3.0 * std::cos(a0), 2.0 * std::sin(a1) + (-1.0) * std::cos(a1)};
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(y[p][i].item<double>(), expect[i], 1e-14) << "p=" << p << " i=" << i;
  }
  // Position 0 is the identity; a unit vector (1, 0) at position p becomes (cos p, sin p).
  EXPECT_TRUE(torch::equal(y[0], x[0]));
  const auto u = apply_rotary(torch::tensor({1.0, 0.0}, f64).repeat({4, 1}), rotary_tables(4, 2, 10000.0, f64));
  EXPECT_NEAR(u[3][0].item<double>(), std::cos(3.0), 1e-15);
  EXPECT_NEAR(u[3][1].item<double>(), std::sin(3.0), 1e-15);
}

TEST(Rope, DotProductsDependOnlyOnTheRelativeOffsetAndNormsArePreserved) {
  torch::manual_seed(3);
  const int64_t L = 40, d = 16;
  const auto q = torch::randn({d}, f64), k = torch::randn({d}, f64);
  const auto tables = rotary_tables(L, d, 10000.0, f64);
  const auto rq = apply_rotary(q.repeat({L, 1}), tables), rk = apply_rotary(k.repeat({L, 1}), tables);
  auto dot = [&](int64_t m, int64_t n) { return torch::dot(rq[m], rk[n]).item<double>(); };
  for (int64_t offset : {-7, 0, 3, 20}) {
    const int64_t m0 = std::max<int64_t>(0, offset);
    const double ref = dot(m0, m0 - offset);
    for (int64_t m = m0; m < L && m - offset < L; m += 5) EXPECT_NEAR(dot(m, m - offset), ref, 1e-12) << offset;
  }
  EXPECT_GT(std::abs(dot(10, 7) - dot(10, 3)), 1e-3);  // different offsets, different scores
  EXPECT_TRUE(torch::allclose(rq.norm(2, -1), q.norm().expand({L}), 0, 1e-13));
}

TEST(Rope, OffsetTablesAreTheLaterRowsAndBroadcastOverHeads) {
  const auto full = rotary_tables(12, 8, 10000.0, f64);
  const auto tail = rotary_tables(4, 8, 10000.0, f64, /*offset=*/8);
  EXPECT_TRUE(torch::allclose(tail.cos, full.cos.slice(0, 8), 0, 1e-15));
  EXPECT_TRUE(torch::allclose(tail.sin, full.sin.slice(0, 8), 0, 1e-15));
  const auto x = torch::randn({2, 3, 12, 8}, f64);  // [B, H, L, d]
  const auto y = apply_rotary(x, full);
  EXPECT_TRUE(torch::allclose(y[1][2], apply_rotary(x[1][2], full), 0, 1e-15));
  EXPECT_EQ(rotary_tables(5, 8, 10000.0, torch::TensorOptions().dtype(torch::kFloat32)).cos.scalar_type(),
            torch::kFloat32);
}

TEST(Rope, RejectsOddHeadSizesAndMismatchedTables) {
  try {
    rotary_tables(4, 5, 10000.0, f64);
    FAIL();
  } catch (const kd::Error& e) {
    EXPECT_EQ(e.category(), kd::ErrorCategory::kValue);
    EXPECT_NE(std::string(e.what()).find("got 5"), std::string::npos) << e.what();
  }
  EXPECT_THROW(rotary_tables(4, 4, 1.0, f64), kd::Error);
  EXPECT_THROW(apply_rotary(torch::randn({3, 8}), rotary_tables(4, 8, 10000.0, f64)), kd::Error);
}

}  // namespace
