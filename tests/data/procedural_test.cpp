#include <gtest/gtest.h>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include <filesystem>

#include "common/shared.h"
#include "data/dataset.h"
#include "data/procedural.h"
#include "io/error.h"

using namespace iadgpt;

namespace {

bool same(const cv::Mat& a, const cv::Mat& b) {
  return a.size() == b.size() && a.type() == b.type() && cv::norm(a, b, cv::NORM_INF) == 0;
}

// Pixels where any channel differs between the two images (8U 0/255).
cv::Mat changed(const cv::Mat& a, const cv::Mat& b) {
  cv::Mat diff, grey;
  cv::absdiff(a, b, diff);
  cv::transform(diff, grey, cv::Matx13f(1, 1, 1));
  return grey > 0;
}

}  // namespace

TEST(Procedural, SameSeedGivesTheSamePixelsAndAnotherSeedDoesNot) {
  for (const auto& cls : data::procedural_classes()) {
    const auto a = data::make_part(cls, 11), b = data::make_part(cls, 11), c = data::make_part(cls, 12);
    EXPECT_TRUE(same(a.image, b.image)) << cls;
    EXPECT_FALSE(same(a.image, c.image)) << cls;
    for (const auto& defect : data::procedural_defects()) {
      const auto x = data::add_defect(a, defect, 5), y = data::add_defect(b, defect, 5);
      EXPECT_TRUE(same(x.image, y.image)) << cls << " " << defect;
      EXPECT_TRUE(same(x.mask, y.mask)) << cls << " " << defect;
    }
  }
}

TEST(Procedural, MaskCoversEveryDrawnPixelAndLiesOnThePart) {
  for (const auto& cls : data::procedural_classes())
    for (const auto& defect : data::procedural_defects())
      for (uint64_t seed = 0; seed < 4; ++seed) {
        const auto part = data::make_part(cls, 100 + seed);
        EXPECT_EQ(cv::countNonZero(part.mask), 0);
        const auto bad = data::add_defect(part, defect, seed);
        const std::string what = cls + "/" + defect + "/" + std::to_string(seed);
        ASSERT_EQ(bad.mask.type(), CV_8U) << what;
        const int area = cv::countNonZero(bad.mask);
        // A defect a person can see: at least 0.1 % of the image (the generator's own floor).
        EXPECT_GE(area, 224 * 224 / 1000) << what;
        const cv::Mat diff = changed(part.image, bad.image);
        // Every changed pixel is inside the ground truth (the defect is drawn only there) ...
        EXPECT_EQ(cv::countNonZero(diff & ~bad.mask), 0) << what;
        // ... and the ground truth is not mostly invisible: a dent's shading passes through 1.0 on
        // a thin band and a translucent stain can match a pixel's colour by chance, so allow 1/3.
        EXPECT_GE(cv::countNonZero(diff & bad.mask), area * 2 / 3) << what;
        EXPECT_EQ(cv::countNonZero(bad.mask & ~part.object), 0) << what;  // on the part only
        EXPECT_EQ(bad.defect, defect);
      }
}

TEST(Procedural, UnknownNamesAreBadInputNamingTheChoices) {
  try {
    data::make_part("teapot", 0);
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("washer"), std::string::npos) << e.what();
  }
  EXPECT_THROW(data::add_defect(data::make_part("pcb", 0), "rust", 0), InputError);
}

TEST(Procedural, WritesAnMvtecTreeTheDatasetLoaderReads) {
  const auto root = test::scratch("procedural_tree");
  std::filesystem::remove_all(root);
  const data::ProceduralSplit split{.classes = {"washer", "wood"}, .train = 3, .test_good = 2, .test_defect = 1,
                                    .size = 96, .seed = 3};
  const int n = data::write_procedural_dataset(root, split);
  const int defects = static_cast<int>(data::procedural_defects().size());
  EXPECT_EQ(n, 2 * (3 + 2 + defects));
  EXPECT_EQ(data::categories(data::Kind::MVTecAD, root), (std::vector<std::string>{"washer", "wood"}));
  for (const auto& cls : split.classes) {
    int train = 0, good = 0, bad = 0;
    for (const auto& s : data::mvtec_ad(root, cls)) {
      if (s.split == data::Split::Train) ++train;
      else if (s.label == 0) ++good;
      else {
        ++bad;
        EXPECT_GT(data::sample_mask(s, 96, 96).sum().item<int64_t>(), 0) << s.image;
      }
    }
    EXPECT_EQ(train, 3);
    EXPECT_EQ(good, 2);
    EXPECT_EQ(bad, defects);
  }
  // The same seed rewrites the same bytes' pixels; train, test and defect images never coincide.
  const auto again = test::scratch("procedural_tree_again");
  std::filesystem::remove_all(again);
  data::write_procedural_dataset(again, split);
  for (const char* rel : {"washer/train/good/000.png", "wood/test/crack/000.png", "wood/ground_truth/crack/000_mask.png"}) {
    cv::Mat a = cv::imread((root / rel).string(), cv::IMREAD_UNCHANGED), b = cv::imread((again / rel).string(), cv::IMREAD_UNCHANGED);
    EXPECT_TRUE(same(a, b)) << rel;
  }
  EXPECT_NE(data::procedural_seed(3, "washer", "train", "good", 0), data::procedural_seed(3, "washer", "test", "good", 0));
}
