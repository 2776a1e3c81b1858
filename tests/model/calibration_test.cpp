// model::fit_decision_bias (the per-class calibration of the Yes/No decision) against hand-worked
// cases and a brute-force search over thresholds written here, independently of the module.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "io/error.h"
#include "model/pipeline.h"

using namespace iadgpt;

namespace {

double logit(double p) { return std::log(p) - std::log1p(-p); }

// Balanced accuracy of "Yes when logit(p) + bias > 0".
double balanced_accuracy(const std::vector<double>& p, const std::vector<uint8_t>& y, double bias) {
  double tp = 0, tn = 0, pos = 0, neg = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const bool yes = logit(p[i]) + bias > 0;
    if (y[i]) pos += 1, tp += yes;
    else neg += 1, tn += !yes;
  }
  return 0.5 * (tp / pos + tn / neg);
}

}  // namespace

TEST(DecisionCalibration, SeparableDefectsBelowOneHalfGetTheMiddleOfTheGap) {
  // Normals at P(Yes) 0.05, 0.1; defects at 0.2, 0.3 (the LLM says "No" to all of them). The widest
  // cut lies between logit(0.1) and logit(0.2): bias = −(logit(0.1) + logit(0.2)) / 2 ≈ 1.792.
  const std::vector<double> p = {0.05, 0.1, 0.2, 0.3};
  const std::vector<uint8_t> y = {0, 0, 1, 1};
  const double expected = -0.5 * (logit(0.1) + logit(0.2));
  EXPECT_NEAR(model::fit_decision_bias(p, y), expected, 1e-12);  // plain arithmetic on the same doubles
  EXPECT_DOUBLE_EQ(balanced_accuracy(p, y, model::fit_decision_bias(p, y)), 1.0);
}

TEST(DecisionCalibration, AlreadyRightDecisionsKeepTheLlmsOwnCut) {
  // Normals at 0.2, 0.3, defects at 0.9, 0.95: the LLM's own cut (P = ½) already separates them.
  const std::vector<double> p = {0.2, 0.3, 0.9, 0.95};
  const std::vector<uint8_t> y = {0, 0, 1, 1};
  EXPECT_EQ(model::fit_decision_bias(p, y), 0.0);
}

TEST(DecisionCalibration, AGainBelowMinGainKeepsTheLlmsOwnCut) {
  // 10 normals at 0.1, one at 0.99, 11 defects at 0.999. The own cut (½) misses that normal
  // (balanced accuracy 0.9545); the cut between 0.99 and 0.999 gets all (1.0): a gain of
  // 1/22 ≈ 0.045, below the default 0.05.
  std::vector<double> p(11, 0.1);
  p[10] = 0.99;
  std::vector<uint8_t> y(11, 0);
  for (int i = 0; i < 11; ++i) p.push_back(0.999), y.push_back(1);
  const double gain = 0.5 * (1.0 / 11.0);  // one more normal right of 11, no defect lost
  ASSERT_LT(gain, 0.05);
  EXPECT_EQ(model::fit_decision_bias(p, y), 0.0);
  // With a smaller min_gain the move is taken: the middle of (logit 0.99, logit 0.999).
  EXPECT_NEAR(model::fit_decision_bias(p, y, 0.01), -0.5 * (logit(0.99) + logit(0.999)), 1e-12);
}

TEST(DecisionCalibration, OverlappingClassesGetABiasAsGoodAsTheBruteForceBest) {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal(0.0, 1.5);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<double> p;
    std::vector<uint8_t> y;
    for (int i = 0; i < 22; ++i) {
      const bool defect = i % 2 == 0 || i > 18;
      // Defects one log-odd lower than normals plus noise: the LLM is miscalibrated and imperfect.
      const double z = (defect ? -1.0 : -2.5) + normal(rng);
      p.push_back(1.0 / (1.0 + std::exp(-z)));
      y.push_back(defect);
    }
    // min_gain 0: the fitted bias must be as good as the best one on a fine grid (steps of 1e-3
    // log-odds across ±12); with the default, either as good or 0 with the best less than 0.05
    // above the LLM's own cut.
    double best = 0;
    for (double b = -12; b <= 12; b += 1e-3) best = std::max(best, balanced_accuracy(p, y, b));
    EXPECT_GE(balanced_accuracy(p, y, model::fit_decision_bias(p, y, 0.0)), best - 1e-12) << "trial " << trial;
    const double fitted = model::fit_decision_bias(p, y);
    if (fitted == 0.0) EXPECT_LT(best - balanced_accuracy(p, y, 0.0), 0.05 + 1e-12) << "trial " << trial;
    else EXPECT_GE(balanced_accuracy(p, y, fitted), best - 1e-12) << "trial " << trial;
  }
}

TEST(DecisionCalibration, OneLabelOnlyOrBadProbabilitiesAreBadInput) {
  EXPECT_THROW(model::fit_decision_bias(std::vector<double>{0.2, 0.4}, std::vector<uint8_t>{1, 1}), InputError);
  EXPECT_THROW(model::fit_decision_bias(std::vector<double>{0.2, 1.5}, std::vector<uint8_t>{0, 1}), InputError);
  EXPECT_THROW(model::fit_decision_bias(std::vector<double>{0.2}, std::vector<uint8_t>{0, 1}), InputError);
}
