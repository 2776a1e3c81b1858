// Acceptance: the built `iadgpt metrics` reproduces every expected.json value of the metrics
// fixtures, and rejects every invalid case with exit code 2 and its specific message.
#include <gtest/gtest.h>

#include "common/run.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>
#include <sys/wait.h>

#include "common/shared.h"

namespace {

namespace fs = std::filesystem;
using iadgpt::test::fixture;
using iadgpt::test::slurp;

struct Run {
  int rc = -1;
  std::string out, err;
};

Run run_metrics(const std::string& args) {
  auto r = iadgpt::test::run_iadgpt("metrics " + args);
  return {r.exit_code, r.out, r.err};
}

std::string input_of(const std::string& c) {
  const auto p = fixture("metrics/" + c + "/input.safetensors");
  if (!fs::exists(p)) throw std::runtime_error("missing fixture " + p.string());
  return "--input '" + p.string() + "'";
}

class MetricsCli : public ::testing::TestWithParam<std::string> {};

// The acceptance bar is 1e-6; the library tests hold the tighter 1e-12 / 1e-10.
TEST_P(MetricsCli, PrintsEveryExpectedValue) {
  const auto r = run_metrics(input_of(GetParam()));
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto got = nlohmann::json::parse(r.out);
  const auto expected = nlohmann::json::parse(slurp(fixture("metrics/" + GetParam() + "/expected.json")));
  ASSERT_FALSE(expected.empty());
  EXPECT_EQ(got.size(), expected.size()) << r.out;
  for (const auto& [key, value] : expected.items()) {
    ASSERT_TRUE(got.contains(key)) << key << " missing in " << r.out;
    EXPECT_NEAR(got[key].get<double>(), value.get<double>(), 1e-6) << GetParam() << " " << key;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, MetricsCli, ::testing::Values("small", "ties_and_constant", "realistic", "large"));

TEST(MetricsCli, ProFprRenamesTheAuproKey) {
  const auto r = run_metrics(input_of("small") + " --pro-fpr 0.05");
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto got = nlohmann::json::parse(r.out);
  EXPECT_TRUE(got.contains("aupro_0.05")) << r.out;
  EXPECT_FALSE(got.contains("aupro_0.3")) << r.out;
}

struct InvalidCase {
  std::string name;
  std::string says;
};

class MetricsCliInvalid : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(MetricsCliInvalid, ExitsTwoWithOneSpecificErrorLine) {
  const auto& c = GetParam();
  const auto r = run_metrics(input_of("invalid/" + c.name));
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_TRUE(r.out.empty()) << "printed metrics: " << r.out;
  EXPECT_EQ(r.err.rfind("iadgpt: error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(c.says), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("nan,"), std::string::npos) << r.err;
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, MetricsCliInvalid,
    ::testing::Values(InvalidCase{"all_normal", "no anomalous images"},
                      InvalidCase{"all_anomalous", "no normal images"},
                      InvalidCase{"no_normal_pixels", "no normal pixels"},
                      InvalidCase{"shape_mismatch", "mask shape must equal the map shape"},
                      InvalidCase{"length_mismatch", "number of image scores/labels must equal the number of maps"},
                      InvalidCase{"nan_in_map", "non-finite value in anomaly_maps at [3,2,5]"},
                      InvalidCase{"nan_in_image_scores", "non-finite value in image_scores at [2]"},
                      InvalidCase{"mask_not_binary", "masks values must be 0 or 1"}),
    [](const auto& info) { return info.param.name; });

TEST(MetricsCli, MissingFileAndBadLimitAreInputErrors) {
  EXPECT_EQ(run_metrics("--input /nonexistent/x.safetensors").rc, 2);
  EXPECT_EQ(run_metrics(input_of("small") + " --pro-fpr 0").rc, 2);
  EXPECT_EQ(run_metrics("").rc, 2);  // --input is required
}

}  // namespace
