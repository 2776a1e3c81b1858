#include <gtest/gtest.h>
#include "io/error.h"
TEST(Scaffold, InputErrorCarriesMessage) {
  iadgpt::InputError e("bad file");
  EXPECT_STREQ(e.what(), "bad file");
}
