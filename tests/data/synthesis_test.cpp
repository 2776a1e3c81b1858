#include <gtest/gtest.h>
#include <torch/torch.h>

#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "common/run.h"
#include "common/shared.h"
#include "anomaly/position.h"
#include "data/synthesis.h"
#include "image/decode.h"
#include "io/error.h"

using namespace iadgpt;
namespace fs = std::filesystem;

namespace {

fs::path hazelnut_good(const std::string& name) {
  const auto p = test::data("hazelnut_toy/hazelnut/train/good/" + name);
  if (!fs::exists(p)) throw std::runtime_error("missing fixture " + p.string());
  return p;
}

cv::Mat load(const fs::path& p) {
  if (!fs::exists(p)) throw std::runtime_error("missing fixture " + p.string());
  return image::decode_file(p);
}

// Mean absolute change over channels, per pixel.
cv::Mat change_of(const cv::Mat& a, const cv::Mat& b) {
  cv::Mat fa, fb, d, out;
  a.convertTo(fa, CV_32FC3);
  b.convertTo(fb, CV_32FC3);
  cv::absdiff(fa, fb, d);
  cv::transform(d, out, cv::Matx13f(1.f / 3, 1.f / 3, 1.f / 3));
  return out;
}

cv::Mat as_mat(const torch::Tensor& t) {  // [H,W] float → CV_32F view of a contiguous copy
  auto c = t.to(torch::kFloat32).contiguous();
  return cv::Mat(static_cast<int>(c.size(0)), static_cast<int>(c.size(1)), CV_32F, c.data_ptr<float>()).clone();
}

}  // namespace

TEST(Nsa, OnRealHazelnutOnlyPastedPixelsChangeAndTheLabelIsTheLogisticOfTheChange) {
  const cv::Mat target = load(hazelnut_good("00.jpg")), source = load(hazelnut_good("01.jpg"));
  data::NsaOptions opt;
  opt.cls = data::nsa_class("hazelnut");
  for (uint64_t seed = 0; seed < 6; ++seed) {
    SCOPED_TRACE(seed);
    std::mt19937_64 rng(seed);
    const auto s = data::nsa(target, source, rng, opt);
    ASSERT_EQ(s.image.size(), target.size());
    ASSERT_EQ(s.image.type(), CV_8UC3);
    ASSERT_EQ(s.soft.sizes(), (torch::IntArrayRef{target.rows, target.cols}));
    EXPECT_GT(s.mask.sum().item<int64_t>(), 0) << "the binarised mask is empty";
    EXPECT_TRUE(torch::equal(s.mask, (s.soft > data::kMaskThreshold).to(torch::kUInt8)));
    EXPECT_GE(s.soft.min().item<float>(), 0.f);
    EXPECT_LE(s.soft.max().item<float>(), 1.f);
    ASSERT_GE(s.pasted.size(), 1u);
    ASSERT_LE(s.pasted.size(), 2u);

    cv::Mat region(target.size(), CV_8U, cv::Scalar(0)), seams(target.size(), CV_8U, cv::Scalar(0));
    // Patches are pasted in order: a later patch covers an earlier one's seam and has its own.
    for (const auto& r : s.pasted) {
      region(r).setTo(1);
      seams(r).setTo(1);
      seams(cv::Rect(r.x + opt.seam, r.y + opt.seam, r.width - 2 * opt.seam, r.height - 2 * opt.seam)).setTo(0);
      // Size: width bound × scale bound (±1 pixel of rounding per step).
      EXPECT_LE(r.width, std::lround(0.35 * 1.3 * target.cols) + 2);
      EXPECT_LE(r.height, std::lround(0.35 * 1.3 * target.rows) + 2);
    }

    const cv::Mat change = change_of(s.image, target), soft = as_mat(s.soft);
    // Outside the dilated soft label (dilated by the seam and the 1-pixel frame seamlessClone
    // keeps), the image is bit-exact; and outside the pasted rectangles too.
    cv::Mat support = soft > 0, dilated;
    cv::dilate(support, dilated, cv::getStructuringElement(cv::MORPH_RECT, {2 * opt.seam + 3, 2 * opt.seam + 3}));
    int64_t changed_outside_dilated = 0, changed_outside_region = 0, seam_nonzero = 0, soft_outside = 0, label_errors = 0;
    for (int y = 0; y < target.rows; ++y)
      for (int x = 0; x < target.cols; ++x) {
        const float c = change.at<float>(y, x), l = soft.at<float>(y, x);
        changed_outside_dilated += (!dilated.at<uint8_t>(y, x) && c > 0);
        changed_outside_region += (!region.at<uint8_t>(y, x) && c > 0);
        soft_outside += (!region.at<uint8_t>(y, x) && l != 0);
        seam_nonzero += (seams.at<uint8_t>(y, x) && l != 0);
        if (region.at<uint8_t>(y, x) && !seams.at<uint8_t>(y, x)) {
          const double expect = 1.0 / (1.0 + std::exp(-(c - 20.0) / 6.0));
          label_errors += std::abs(expect - l) > 1e-5;  // float exp vs double: 1e-5 is far above rounding
        }
      }
    EXPECT_EQ(changed_outside_dilated, 0);
    EXPECT_EQ(changed_outside_region, 0);
    EXPECT_EQ(soft_outside, 0);
    EXPECT_EQ(seam_nonzero, 0) << "seam pixels must be zero";
    EXPECT_EQ(label_errors, 0);
  }
}

TEST(Nsa, PatchesLieOnTheObjectOfAPlainBackgroundClass) {
  const cv::Mat target = load(hazelnut_good("02.jpg")), source = load(hazelnut_good("03.jpg"));
  const auto cls = data::nsa_class("hazelnut");
  ASSERT_TRUE(cls.plain_background);
  const auto object = data::object_mask(target, cls);
  const double object_fraction = object.to(torch::kFloat32).mean().item<double>();
  // The nut covers a good part of the frame; the black background is skipped.
  EXPECT_GT(object_fraction, 0.1);
  EXPECT_LT(object_fraction, 0.9);
  EXPECT_EQ(object[0][0].item<int>(), 0);
  EXPECT_EQ(object[target.rows / 2][target.cols / 2].item<int>(), 1);
  data::NsaOptions opt;
  opt.cls = cls;
  std::mt19937_64 rng(11);
  for (int i = 0; i < 5; ++i) {
    const auto s = data::nsa(target, source, rng, opt);
    for (const auto& r : s.pasted) {
      const double on = object.slice(0, r.y, r.y + r.height).slice(1, r.x, r.x + r.width).to(torch::kFloat32).mean().item<double>();
      EXPECT_GE(on, 0.25) << "patch " << r;
    }
  }
  // A class without a plain background: the whole image is object.
  EXPECT_EQ(data::object_mask(target, data::nsa_class("carpet")).min().item<int>(), 1);
}

TEST(Nsa, SameSeedSameSampleOtherSeedOtherSample) {
  const cv::Mat target = load(hazelnut_good("06.jpg")), source = load(hazelnut_good("07.jpg"));
  data::NsaOptions opt;
  opt.cls = data::nsa_class("hazelnut");
  std::mt19937_64 a(5), b(5), c(6);
  const auto s1 = data::nsa(target, source, a, opt), s2 = data::nsa(target, source, b, opt), s3 = data::nsa(target, source, c, opt);
  EXPECT_EQ(cv::norm(s1.image, s2.image, cv::NORM_INF), 0.0);
  EXPECT_TRUE(torch::equal(s1.soft, s2.soft));
  EXPECT_FALSE(torch::equal(s1.soft, s3.soft));
}

TEST(PerlinNoise, IsZeroOnTheLatticeAndBounded) {
  std::mt19937_64 rng(1);
  const cv::Mat n = data::perlin_noise(64, 96, 4, 8, rng);
  double lo, hi;
  cv::minMaxLoc(n, &lo, &hi);
  // √2-scaled 2-D gradient noise is bounded by 1 (|g|=1, offsets ≤ √½ after the fade weights).
  EXPECT_GE(lo, -1.0001);
  EXPECT_LE(hi, 1.0001);
  EXPECT_GT(hi - lo, 0.3) << "noise is flat";
  for (int gy = 0; gy < 4; ++gy)
    for (int gx = 0; gx < 8; ++gx) EXPECT_NEAR(n.at<float>(gy * 16, gx * 12), 0.f, 1e-6);
}

TEST(Perlin, MaskMatchesTheChangedPixelsAndTheBlendFormula) {
  const cv::Mat target = load(hazelnut_good("08.jpg"));
  const cv::Mat texture = load(test::data("dtd/images/banded/banded_0002.jpg"));
  data::PerlinOptions opt;
  opt.min_beta = opt.max_beta = 0.1;
  std::mt19937_64 rng(2);
  for (int i = 0; i < 4; ++i) {
    double beta = -1;
    const auto s = data::perlin(target, texture, rng, opt, &beta);
    EXPECT_DOUBLE_EQ(beta, 0.1);
    ASSERT_GT(s.mask.sum().item<int64_t>(), 0);
    EXPECT_TRUE(torch::equal(s.soft, s.mask.to(torch::kFloat32)));
    cv::Mat tex;
    cv::resize(texture, tex, target.size(), 0, 0, cv::INTER_LINEAR);
    auto m = s.mask.accessor<uint8_t, 2>();
    int64_t outside_changed = 0, formula_errors = 0, inside = 0, inside_changed = 0;
    for (int y = 0; y < target.rows; ++y)
      for (int x = 0; x < target.cols; ++x) {
        const auto o = s.image.at<cv::Vec3b>(y, x), t = target.at<cv::Vec3b>(y, x), u = tex.at<cv::Vec3b>(y, x);
        if (!m[y][x]) {
          outside_changed += (o != t);
          continue;
        }
        ++inside;
        inside_changed += (o != t);
        for (int c = 0; c < 3; ++c)
          formula_errors += std::abs(o[c] - ((1 - beta) * u[c] + beta * t[c])) > 0.5 + 1e-9;  // rounding to u8
      }
    EXPECT_EQ(outside_changed, 0);
    EXPECT_EQ(formula_errors, 0);
    // With β = 0.1 the texture dominates: almost every masked pixel changes.
    EXPECT_GT(inside_changed, inside * 9 / 10);
  }
}

TEST(Perlin, BetaStaysWithinItsBounds) {
  const cv::Mat target = load(hazelnut_good("09.jpg"));
  const cv::Mat texture = load(test::data("dtd/images/cracked/cracked_0004.jpg"));
  data::PerlinOptions opt;  // METHOD §3.1: β ∈ [0.1, 1.0]
  std::mt19937_64 rng(3);
  double lo = 1, hi = 0;
  for (int i = 0; i < 30; ++i) {
    double beta = -1;
    (void)data::perlin(target(cv::Rect(0, 0, 64, 64)), texture, rng, opt, &beta);
    lo = std::min(lo, beta), hi = std::max(hi, beta);
  }
  EXPECT_GE(lo, 0.1);
  EXPECT_LE(hi, 1.0);
  EXPECT_GT(hi - lo, 0.3) << "β is not drawn";
  opt.min_beta = 0.5, opt.max_beta = 0.2;
  EXPECT_THROW(data::perlin(target, texture, rng, opt), InputError);
}

TEST(Synthesis, AnswerNamesThePositionsOfTheMaskComponents) {
  auto mask = torch::zeros({90, 90}, torch::kUInt8);
  mask.slice(0, 5, 20).slice(1, 5, 20).fill_(1);    // top left cell
  mask.slice(0, 70, 85).slice(1, 65, 88).fill_(1);  // bottom right cell
  const auto two = data::answer_for_mask(mask);
  EXPECT_NE(two.find("2 anomalies"), std::string::npos) << two;
  EXPECT_NE(two.find("top left"), std::string::npos) << two;
  EXPECT_NE(two.find("bottom right"), std::string::npos) << two;
  EXPECT_EQ(two.find("center"), std::string::npos) << two;

  auto one = torch::zeros({90, 90}, torch::kUInt8);
  one.slice(0, 40, 50).slice(1, 62, 80).fill_(1);  // right cell
  EXPECT_EQ(data::answer_for_mask(one), "Yes, there is an anomaly in the image, at the right of the image.");
  // A 1-pixel speck next to a real region is dropped; a speck alone still counts.
  one[2][2] = 1;
  EXPECT_EQ(data::answer_for_mask(one), "Yes, there is an anomaly in the image, at the right of the image.");
  auto speck = torch::zeros({90, 90}, torch::kUInt8);
  speck[85][3] = 1;
  EXPECT_EQ(data::answer_for_mask(speck), "Yes, there is an anomaly in the image, at the bottom left of the image.");
  EXPECT_EQ(data::answer_for_mask(torch::zeros({90, 90}, torch::kUInt8)), "No, there is no anomaly in the image.");
  // A speckled patch (as NSA labels are) is one anomaly, not one per stripe.
  auto striped = torch::zeros({300, 300}, torch::kUInt8);
  striped.slice(0, 130, 170).slice(1, 130, 170).slice(1, 0, 40, 2).fill_(1);
  EXPECT_EQ(anomaly::find_regions(striped.to(torch::kFloat32), 0.5).size(), 20u);
  EXPECT_EQ(data::answer_for_mask(striped), "Yes, there is an anomaly in the image, at the center of the image.");
}

TEST(Synthesis, EachNormalImageYieldsANormalAndASyntheticPair) {
  const cv::Mat normal = load(hazelnut_good("10.jpg")), other = load(hazelnut_good("11.jpg"));
  data::SynthesisOptions opt;
  opt.nsa.cls = data::nsa_class("hazelnut");
  std::mt19937_64 rng(4);
  const std::vector<cv::Mat> others{other};
  auto pair = data::make_pair(normal, data::synthesize(data::SynthesisMethod::Nsa, normal, others, {}, rng, opt));
  EXPECT_EQ(pair.normal_answer, "No, there is no anomaly in the image.");
  EXPECT_EQ(pair.normal_mask.sum().item<int64_t>(), 0);
  EXPECT_EQ(pair.anomaly_answer.rfind("Yes, ", 0), 0u) << pair.anomaly_answer;
  EXPECT_EQ(pair.anomaly_answer, data::answer_for_mask(pair.synthetic.mask));
  // CutPaste through the same entry point, with and without other normals.
  auto cp = data::synthesize(data::SynthesisMethod::CutPaste, normal, {}, {}, rng, opt);
  EXPECT_GT(cp.mask.sum().item<int64_t>(), 0);
  EXPECT_TRUE(torch::equal(cp.soft, cp.mask.to(torch::kFloat32)));
  // Missing inputs are the user's error.
  EXPECT_THROW(data::synthesize(data::SynthesisMethod::Nsa, normal, {}, {}, rng, opt), InputError);
  EXPECT_THROW(data::synthesize(data::SynthesisMethod::Perlin, normal, others, {}, rng, opt), InputError);
  EXPECT_EQ(data::parse_synthesis_method("perlin"), data::SynthesisMethod::Perlin);
  EXPECT_THROW(data::parse_synthesis_method("draem"), InputError);
}

TEST(SynthCli, WritesImagesMasksAndSamples) {
  const auto root = test::data("hazelnut_toy");
  ASSERT_TRUE(fs::exists(root / "hazelnut/train/good")) << root;
  const auto out = test::scratch("synth") / "nsa";
  const auto r = test::run_iadgpt("synth --dataset mvtec:'" + root.string() + "' --category hazelnut --method nsa --count 3 --seed 1 --out '" + out.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // count 3 takes the first three training images, in the dataset's sorted order.
  const char* sources[] = {"00.jpg", "01.jpg", "02.jpg"};
  for (int i = 0; i < 3; ++i) {
    const std::string name = fmt::format("{:03d}", i);
    const auto img = image::decode_file(out / (name + ".png"));
    const auto mask = image::decode_file(out / (name + "_mask.png"));
    EXPECT_EQ(img.size(), image::decode_file(hazelnut_good(sources[i])).size()) << name;
    EXPECT_EQ(mask.size(), img.size());
    EXPECT_GT(cv::countNonZero(mask.reshape(1)), 0) << name;
  }
  std::ifstream in(out / "samples.jsonl");
  std::string line;
  int lines = 0, yes = 0, no = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    ++lines;
    const auto answer = j.at("answer").get<std::string>();
    if (j.at("label").get<int>() == 1) {
      ++yes;
      EXPECT_EQ(answer.rfind("Yes, ", 0), 0u) << answer;
      EXPECT_TRUE(fs::exists(out / j.at("image").get<std::string>())) << line;
    } else {
      ++no;
      EXPECT_EQ(answer, "No, there is no anomaly in the image.");
      EXPECT_TRUE(fs::exists(j.at("image").get<std::string>())) << line;
    }
  }
  EXPECT_EQ(lines, 6);
  EXPECT_EQ(yes, 3);
  EXPECT_EQ(no, 3);
}

TEST(SynthCli, RejectsBadInputWithExitCode2) {
  const auto out = test::scratch("synth") / "bad";
  auto r = test::run_iadgpt("synth --dataset nope:/tmp --category hazelnut --out '" + out.string() + "'");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("iadgpt: error:"), std::string::npos) << r.err;
  r = test::run_iadgpt("synth --dataset mvtec:/does/not/exist --category hazelnut --out '" + out.string() + "'");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  const auto root = test::data("hazelnut_toy");
  r = test::run_iadgpt("synth --dataset mvtec:'" + root.string() + "' --category hazelnut --method perlin --out '" + out.string() + "'");
  EXPECT_EQ(r.exit_code, 2) << "perlin without --textures: " << r.err;
  r = test::run_iadgpt("synth --dataset mvtec:'" + root.string() + "' --category hazelnut --method draem --out '" + out.string() + "'");
  EXPECT_EQ(r.exit_code, 2) << r.err;
}
