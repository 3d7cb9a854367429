// kd::detail::with_thousands against hand-written strings.
#include <cstdint>
#include <limits>

#include <gtest/gtest.h>

#include "kd/detail/format.h"

TEST(Format, WithThousandsGroupsDigitsInThrees) {
  EXPECT_EQ(kd::detail::with_thousands(0), "0");
  EXPECT_EQ(kd::detail::with_thousands(999), "999");
  EXPECT_EQ(kd::detail::with_thousands(1000), "1,000");
  EXPECT_EQ(kd::detail::with_thousands(3668), "3,668");
  EXPECT_EQ(kd::detail::with_thousands(222350), "222,350");
  EXPECT_EQ(kd::detail::with_thousands(1050624), "1,050,624");
  EXPECT_EQ(kd::detail::with_thousands(-1234), "-1,234");
  EXPECT_EQ(kd::detail::with_thousands(-999), "-999");
  EXPECT_EQ(kd::detail::with_thousands(std::numeric_limits<int64_t>::min()), "-9,223,372,036,854,775,808");
}
