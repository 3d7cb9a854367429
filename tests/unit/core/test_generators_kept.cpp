// kd::GeneratorsKept: the random stream after the guard's scope is the stream before it, also when the
// scope is left by an exception.
#include <stdexcept>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kd/core/generators_kept.h"

namespace {

TEST(GeneratorsKept, DrawsInsideItsScopeDoNotMoveTheStream) {
  torch::manual_seed(9);
  const auto expected = torch::rand({5});
  torch::manual_seed(9);
  {
    kd::GeneratorsKept kept;
    torch::rand({100});
    torch::nn::Linear(8, 8);  // initial weights draw too
  }
  EXPECT_TRUE(torch::equal(torch::rand({5}), expected));
  torch::manual_seed(9);
  try {
    kd::GeneratorsKept kept;
    torch::randn({7});
    throw std::runtime_error("left early");
  } catch (const std::runtime_error&) {
  }
  EXPECT_TRUE(torch::equal(torch::rand({5}), expected));
}

}  // namespace
