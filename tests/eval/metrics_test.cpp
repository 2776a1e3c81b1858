// Metrics against ../shared/fixtures/metrics: values from scikit-learn 1.2.1 and MVTec AD's
// official evaluation code (expected.json), debugging curves (curves.json), invalid inputs.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>

#include "common/shared.h"
#include "eval/metrics.h"
#include "eval/regions.h"
#include "io/checkpoint.h"
#include "io/error.h"

namespace {

using namespace iadgpt;
namespace fs = std::filesystem;

fs::path case_dir(const std::string& name) { return test::fixture("metrics/" + name); }

nlohmann::json read_json(const fs::path& p) {
  std::ifstream f(p);
  if (!f) throw std::runtime_error("missing fixture " + p.string());
  return nlohmann::json::parse(f);
}

io::TensorMap load_case(const std::string& name) {
  return io::load_safetensors(case_dir(name) / "input.safetensors");
}

template <class T>
std::span<const T> span_of(const torch::Tensor& t) {
  return {t.data_ptr<T>(), static_cast<size_t>(t.numel())};
}

eval::PixelInput pixels_of(const io::TensorMap& t) {
  const auto& maps = t.at("anomaly_maps");
  return {span_of<float>(maps), span_of<uint8_t>(t.at("masks")), maps.size(0), maps.size(1), maps.size(2)};
}

// Tolerances: the sklearn metrics are computed exactly here (integer counts, one rounding), and the
// references agree with exact arithmetic to 1.2e-16, so 1e-12 leaves room for summation order only.
// AUPRO reproduces the official float32 FPRs; what remains is float64 summation order over up to
// 600k trapezoids (measured ~1e-13), so 1e-10 (the official-vs-exact gap is a few 1e-9, so a
// version that skipped the float32 rounding would fail).
constexpr double kSklearnTol = 1e-12;
constexpr double kAuproTol = 1e-10;

class ValidCase : public ::testing::TestWithParam<std::string> {};

TEST_P(ValidCase, ReproducesSklearnAndOfficialMvtecValues) {
  const auto tensors = load_case(GetParam());
  const auto expected = read_json(case_dir(GetParam()) / "expected.json");
  const auto t0 = std::chrono::steady_clock::now();
  const auto report = eval::compute_metrics(tensors, 0.3, GetParam());
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::cout << GetParam() << ": compute_metrics " << ms << " ms\n";
  const auto got = eval::to_json(report);
  ASSERT_EQ(got.size(), expected.size());
  double worst_sklearn = 0, worst_aupro = 0;
  for (const auto& [key, value] : expected.items()) {
    const double d = std::abs(got[key].get<double>() - value.get<double>());
    (key == "aupro_0.3" ? worst_aupro : worst_sklearn) = std::max(d, key == "aupro_0.3" ? worst_aupro : worst_sklearn);
  }
  std::cout << GetParam() << ": max |diff| sklearn metrics " << worst_sklearn << ", aupro " << worst_aupro << "\n";
  for (const auto& [key, value] : expected.items()) {
    ASSERT_TRUE(got.contains(key)) << key;
    const double tol = key == "aupro_0.3" ? kAuproTol : kSklearnTol;
    EXPECT_NEAR(got[key].get<double>(), value.get<double>(), tol) << GetParam() << " " << key;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ValidCase,
                         ::testing::Values("small", "ties_and_constant", "realistic", "large"));

class CurveCase : public ::testing::TestWithParam<std::string> {};

TEST_P(CurveCase, ImageAndPixelThresholdsMatchSklearnTable) {
  const auto tensors = load_case(GetParam());
  const auto curves = read_json(case_dir(GetParam()) / "curves.json");
  const auto check = [](const std::vector<eval::CurvePoint>& got, const nlohmann::json& want) {
    ASSERT_EQ(got.size(), want["threshold"].size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].threshold, want["threshold"][i].get<double>()) << i;
      EXPECT_EQ(got[i].tp, want["tp"][i].get<int64_t>()) << i;
      EXPECT_EQ(got[i].fp, want["fp"][i].get<int64_t>()) << i;
    }
  };
  check(eval::binary_curve(span_of<float>(tensors.at("image_scores")), span_of<uint8_t>(tensors.at("image_labels"))),
        curves["image"]);
  check(eval::binary_curve(span_of<float>(tensors.at("anomaly_maps")), span_of<uint8_t>(tensors.at("masks")), "pixel"),
        curves["pixel"]);
}

TEST_P(CurveCase, ProCurveMatchesOfficialComputePro) {
  const auto tensors = load_case(GetParam());
  const auto want = read_json(case_dir(GetParam()) / "curves.json")["official_pro_curve"];
  const auto got = eval::pro_curve(pixels_of(tensors));
  ASSERT_EQ(got.fpr.size(), want["fpr"].size());
  for (size_t i = 0; i < got.fpr.size(); ++i) {
    EXPECT_EQ(got.fpr[i], want["fpr"][i].get<double>()) << i;  // float32 values: exact
    EXPECT_NEAR(got.pro[i], want["pro"][i].get<double>(), 1e-15) << i;  // cumsum order only
  }
}

TEST_P(CurveCase, StreamedAuproEqualsTrapezoidOfTheFullCurveAtEveryLimit) {
  // The one-pass integral must agree with the array version (official trapezoid) for any limit,
  // including limits that land on an FPR value (1.0 always does).
  const auto tensors = load_case(GetParam());
  const auto px = pixels_of(tensors);
  const auto curve = eval::pro_curve(px);
  for (double limit : {0.01, 0.05, 0.1, 0.25, 0.3, 0.5, 1.0}) {
    EXPECT_NEAR(eval::pixel_metrics(px, limit).aupro, eval::trapezoid(curve.fpr, curve.pro, limit) / limit, 1e-15)
        << limit;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CurveCase, ::testing::Values("small", "ties_and_constant"));

// ---- invalid inputs: one InputError naming the problem -------------------------------------------

struct InvalidCase {
  std::string name;
  std::vector<std::string> says;
};

class Invalid : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(Invalid, IsRejectedWithASpecificError) {
  const auto& c = GetParam();
  const auto tensors = load_case("invalid/" + c.name);
  try {
    eval::compute_metrics(tensors, 0.3, "input.safetensors");
    FAIL() << c.name << " was accepted";
  } catch (const InputError& e) {
    const std::string what = e.what();
    for (const auto& s : c.says) EXPECT_NE(what.find(s), std::string::npos) << "'" << s << "' not in: " << what;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, Invalid,
    ::testing::Values(InvalidCase{"all_normal", {"only one class", "no anomalous images", "no anomalous pixels",
                                                 "ground-truth regions", "AUPRO"}},
                      InvalidCase{"all_anomalous", {"only one class at image level", "no normal images",
                                                    "image AUROC"}},
                      InvalidCase{"no_normal_pixels", {"no normal images", "no normal pixels", "pixel AUROC"}},
                      InvalidCase{"shape_mismatch", {"masks has shape [6,8,9]", "anomaly_maps has shape [6,8,8]"}},
                      InvalidCase{"length_mismatch", {"7 entries", "6 maps"}},
                      InvalidCase{"nan_in_map", {"non-finite value in anomaly_maps at [3,2,5]", "NaN"}},
                      InvalidCase{"nan_in_image_scores", {"non-finite value in image_scores at [2]"}},
                      InvalidCase{"mask_not_binary", {"masks values must be 0 or 1", "255"}}),
    [](const auto& info) { return info.param.name; });

TEST(Invalid, AllAnomalousPixelLevelIsStillDefined) {
  // invalid/README.md: sklearn / official values for the pixel level of all_anomalous.
  const auto tensors = load_case("invalid/all_anomalous");
  const auto p = eval::pixel_metrics(pixels_of(tensors), 0.3);
  EXPECT_NEAR(p.auroc, 0.8453132588635259, kSklearnTol);
  EXPECT_NEAR(p.ap, 0.39357230012259065, kSklearnTol);
  EXPECT_NEAR(p.f1_max, 0.4722222222222222, kSklearnTol);
  EXPECT_NEAR(p.aupro, 0.42000654257659403, kAuproTol);
}

TEST(Invalid, MissingTensorAndWrongDtypeNameTheKey) {
  auto tensors = load_case("small");
  auto copy = tensors;
  copy.erase("masks");
  EXPECT_THROW(
      {
        try {
          eval::compute_metrics(copy, 0.3, "f.safetensors");
        } catch (const InputError& e) {
          EXPECT_NE(std::string(e.what()).find("missing tensor 'masks'"), std::string::npos) << e.what();
          throw;
        }
      },
      InputError);
  copy = tensors;
  copy["image_scores"] = copy["image_scores"].to(torch::kFloat64);
  EXPECT_THROW(eval::compute_metrics(copy, 0.3, "f.safetensors"), InputError);
  EXPECT_THROW(eval::compute_metrics(tensors, 0.0, "f.safetensors"), InputError);
  EXPECT_THROW(eval::compute_metrics(tensors, 1.5, "f.safetensors"), InputError);
}

// ---- library behaviour on hand-made inputs -------------------------------------------------------

TEST(BinaryMetrics, TiesCountHalfInAuroc) {
  // One positive tied with one negative, another positive above: U = 1 + 0.5 of 2 pairs.
  const float s[] = {0.5f, 0.5f, 0.9f};
  const uint8_t y[] = {0, 1, 1};
  EXPECT_DOUBLE_EQ(eval::binary_metrics(s, y).auroc, 0.75);
}

TEST(BinaryMetrics, NegativeZeroAndPositiveZeroAreOneThreshold) {
  const float s[] = {-0.0f, 0.0f, 1.0f};
  const uint8_t y[] = {0, 1, 1};
  const auto curve = eval::binary_curve(s, y);
  ASSERT_EQ(curve.size(), 2u);
  EXPECT_EQ(curve[1].tp, 2);
  EXPECT_EQ(curve[1].fp, 1);
  EXPECT_DOUBLE_EQ(eval::binary_metrics(s, y).auroc, 0.75);
}

TEST(BinaryMetrics, ApIsStepSumNotTrapezoid) {
  // sklearn doc example: y=[0,0,1,1], s=[0.1,0.4,0.35,0.8] -> AP 0.8333..., AUROC 0.75.
  const float s[] = {0.1f, 0.4f, 0.35f, 0.8f};
  const uint8_t y[] = {0, 0, 1, 1};
  const auto m = eval::binary_metrics(s, y);
  EXPECT_NEAR(m.ap, 0.8333333333333333, 1e-15);
  EXPECT_NEAR(m.auroc, 0.75, 1e-15);
  EXPECT_NEAR(m.f1_max, 0.8, 1e-15);  // threshold 0.35: tp 2, fp 1 -> 2*2/(2+3)
}

TEST(BinaryMetrics, WorksForScoresOutsideUnitInterval) {
  // Pairs (positive > negative): -2.5 > -3, 1e30 > -3, 1e30 > 7; -2.5 < 7 -> 3/4.
  const float s[] = {-3.f, -2.5f, 7.f, 1e30f};
  const uint8_t y[] = {0, 1, 0, 1};
  EXPECT_DOUBLE_EQ(eval::binary_metrics(s, y).auroc, 0.75);
}

TEST(Regions, DiagonalNeighboursJoinOneRegion) {
  // A 3-px diagonal chain and an isolated pixel: 2 regions with 8-connectivity (4 with 4-conn).
  const uint8_t m[] = {1, 0, 0, 0,  //
                       0, 1, 0, 0,  //
                       0, 0, 1, 0,  //
                       1, 0, 0, 0};
  std::vector<int32_t> labels(16);
  EXPECT_EQ(eval::label_regions_8(m, 4, 4, labels), 2);
  EXPECT_EQ(labels[0], labels[5]);
  EXPECT_EQ(labels[5], labels[10]);
  EXPECT_NE(labels[12], labels[0]);
  EXPECT_EQ(labels[1], 0);
}

TEST(Trapezoid, InterpolatesAtTheLimitUnlessItIsAnXValue) {
  const std::vector<double> x = {0.0, 0.2, 0.4, 1.0}, y = {0.0, 0.5, 1.0, 1.0};
  // to 0.3: 0.2*0.5/2 + (0.5+0.75)/2*0.1
  EXPECT_NEAR(eval::trapezoid(x, y, 0.3), 0.05 + 0.0625, 1e-15);
  EXPECT_NEAR(eval::trapezoid(x, y, 0.4), 0.05 + 0.15, 1e-15);
}

TEST(YesNo, AccuracyCountsAgreement) {
  const uint8_t said[] = {1, 0, 1, 1}, truth[] = {1, 0, 0, 1};
  EXPECT_DOUBLE_EQ(eval::yes_no_accuracy(said, truth), 0.75);
  const uint8_t short_truth[] = {1};
  EXPECT_THROW(eval::yes_no_accuracy(said, short_truth), InputError);
}

TEST(YesNo, FirstStandaloneYesOrNoDecides) {
  EXPECT_EQ(eval::parse_yes_no("Yes, there is an anomaly in the image, at the top left."), true);
  EXPECT_EQ(eval::parse_yes_no("No. The bottle looks normal, no defect."), false);
  EXPECT_EQ(eval::parse_yes_no("  NO anomaly; yes I am sure"), false);
  EXPECT_EQ(eval::parse_yes_no("Nothing unusual, eyes fine"), std::nullopt);  // 'Nothing', 'eyes' are not words yes/no
}

TEST(Json, AuproKeyFollowsTheLimit) {
  EXPECT_EQ(eval::aupro_key(0.3), "aupro_0.3");
  EXPECT_EQ(eval::aupro_key(0.05), "aupro_0.05");
}

}  // namespace
