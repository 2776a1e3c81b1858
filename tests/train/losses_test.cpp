// Focal and dice losses on tiny tensors; expected values are written out by hand from the
// formulas of AnomalyGPT's FocalLoss/BinaryDiceLoss (see src/train/losses.h), not taken from the code.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "io/error.h"
#include "train/losses.h"

using namespace iadgpt;

namespace {

// Two pixels: abnormal probabilities 0.8 and 0.3; [1, 2, 1, 2].
torch::Tensor two_pixel_map() {
  auto abnormal = torch::tensor({0.8f, 0.3f}).reshape({1, 1, 1, 2});
  return torch::cat({1.0 - abnormal, abnormal}, 1);
}

// -(1-p)^2 log p with AnomalyGPT's smoothed key: p = (1-s)·p_true + s·p_other + s.
double focal_term(double p_true, double s = 1e-5) {
  const double pt = (1 - s) * p_true + s * (1 - p_true) + s;
  return -std::pow(1 - pt, 2) * std::log(pt);
}

}  // namespace

TEST(Losses, MaskIsBinarisedStrictlyAboveThreshold) {
  auto mask = torch::tensor({0.0f, 0.3f, 0.31f, 1.0f});
  auto bin = train::binarize_mask(mask);
  EXPECT_TRUE(torch::equal(bin, torch::tensor({0.0f, 0.0f, 1.0f, 1.0f})));
}

TEST(Losses, FocalMatchesHandComputedSmoothedValue) {
  auto target = torch::tensor({1.0f, 0.0f}).reshape({1, 1, 2});  // pixel 0 abnormal, pixel 1 normal
  const double expected = (focal_term(0.8) + focal_term(0.7)) / 2;  // mean over the two pixels
  // Tolerance: float32 arithmetic on values of order 1e-2.
  EXPECT_NEAR(train::focal_loss(two_pixel_map(), target).item<double>(), expected, 1e-6);
  // [B, 1, H, W] targets are accepted the same way.
  EXPECT_NEAR(train::focal_loss(two_pixel_map(), target.unsqueeze(1)).item<double>(), expected, 1e-6);
}

TEST(Losses, FocalIsSmallForConfidentRightAndLargeForConfidentWrong) {
  auto right = torch::tensor({0.0f, 0.0f, 1.0f, 1.0f}).reshape({1, 2, 1, 2});  // abnormal everywhere
  auto ones = torch::ones({1, 1, 2});
  EXPECT_LT(train::focal_loss(right, ones).item<double>(), 1e-8);
  EXPECT_GT(train::focal_loss(right, torch::zeros({1, 1, 2})).item<double>(), 10.0);  // -log(2e-5)≈10.8
}

TEST(Losses, DiceMatchesHandComputedValue) {
  auto abnormal = two_pixel_map().select(1, 1);  // [1, 1, 2]
  auto target = torch::tensor({1.0f, 0.0f}).reshape({1, 1, 2});
  // (2·0.8 + 1) / (0.8 + 0.3 + 1 + 1) = 2.6 / 3.1
  EXPECT_NEAR(train::dice_loss(abnormal, target).item<double>(), 1.0 - 2.6 / 3.1, 1e-6);
}

TEST(Losses, DiceAveragesPerImageDiceOverTheBatch) {
  auto abnormal = torch::tensor({0.8f, 0.3f, 0.0f, 0.0f}).reshape({2, 1, 2});
  auto target = torch::tensor({1.0f, 0.0f, 0.0f, 0.0f}).reshape({2, 1, 2});
  // Image 1: 2.6/3.1; image 2 (empty map, empty mask): (0+1)/(0+0+1) = 1.
  EXPECT_NEAR(train::dice_loss(abnormal, target).item<double>(), 1.0 - (2.6 / 3.1 + 1.0) / 2, 1e-6);
}

TEST(Losses, MapLossSumsFocalAndDiceOverLayers) {
  auto target = torch::tensor({1.0f, 0.0f}).reshape({1, 1, 2});
  auto flipped = torch::flip(two_pixel_map(), {1});  // abnormal 0.2, 0.7
  auto loss = train::map_loss({two_pixel_map(), flipped}, target);
  const double focal = (focal_term(0.8) + focal_term(0.7)) / 2 + (focal_term(0.2) + focal_term(0.3)) / 2;
  const double dice = (1.0 - 2.6 / 3.1) + (1.0 - (2 * 0.2 + 1) / (0.9 + 1 + 1));
  EXPECT_NEAR(loss.focal.item<double>(), focal, 1e-5);
  EXPECT_NEAR(loss.dice.item<double>(), dice, 1e-6);
  EXPECT_NEAR(loss.total.item<double>(), focal + dice, 1e-5);
}

TEST(Losses, GradientFlowsToTheLogitsThroughTheSoftmax) {
  auto logits = torch::zeros({1, 2, 1, 2}, torch::requires_grad());
  auto target = torch::tensor({1.0f, 0.0f}).reshape({1, 1, 2});
  train::map_loss({torch::softmax(logits, 1)}, target).total.backward();
  auto g = logits.grad();
  // Descending the gradient must raise the abnormal logit at the abnormal pixel and lower it at the normal one.
  EXPECT_LT(g[0][1][0][0].item<float>(), 0.0f);
  EXPECT_GT(g[0][1][0][1].item<float>(), 0.0f);
}

TEST(Losses, BadShapesAreInputErrors) {
  EXPECT_THROW(train::focal_loss(torch::zeros({2, 2}), torch::zeros({2})), InputError);
  EXPECT_THROW(train::dice_loss(torch::zeros({1, 4}), torch::zeros({1, 3})), InputError);
  EXPECT_THROW(train::map_loss({}, torch::zeros({1, 2, 2})), InputError);
  EXPECT_THROW(train::map_loss({torch::zeros({1, 3, 2, 2})}, torch::zeros({1, 2, 2})), InputError);
}
