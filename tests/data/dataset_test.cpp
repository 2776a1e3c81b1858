// Dataset listings on the real subsets in ../shared/data (MVTec AD grid, MVTec 3D-AD tire,
// anomalib hazelnut_toy), a VisA layout built in a scratch folder, and malformed layouts.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <map>
#include <sstream>

#include "common/shared.h"
#include "data/dataset.h"
#include "io/error.h"

namespace {

using namespace iadgpt;
namespace fs = std::filesystem;
using data::Kind;
using data::Split;

// MANIFEST.csv: path -> nonzero (count of mask pixels != 0), for masks.
std::map<std::string, int64_t> manifest_nonzero(const fs::path& manifest) {
  std::ifstream f(manifest);
  if (!f) throw std::runtime_error("missing " + manifest.string());
  std::string line;
  std::getline(f, line);
  std::vector<std::string> header;
  {
    std::stringstream ss(line);
    for (std::string c; std::getline(ss, c, ',');) header.push_back(c);
  }
  const auto col = [&](const std::string& name) {
    return static_cast<size_t>(std::find(header.begin(), header.end(), name) - header.begin());
  };
  const size_t c_path = col("path"), c_kind = col("kind"), c_nonzero = col("nonzero");
  std::map<std::string, int64_t> out;
  while (std::getline(f, line)) {
    std::vector<std::string> row;
    std::stringstream ss(line);
    for (std::string c; std::getline(ss, c, ',');) row.push_back(c);
    if (row.size() > c_nonzero && row[c_kind] == "mask") out[row[c_path]] = std::stoll(row[c_nonzero]);
  }
  if (out.empty()) throw std::runtime_error("no masks listed in " + manifest.string());
  return out;
}

std::map<std::string, int> count_by_defect(const std::vector<data::Sample>& v, Split split) {
  std::map<std::string, int> out;
  for (const auto& s : v) {
    if (s.split == split) out[s.defect]++;
  }
  return out;
}

// Every listed mask binarises to 0/1 with as many ones as MANIFEST.csv's `nonzero` column.
void expect_masks_match_manifest(const std::vector<data::Sample>& samples, const fs::path& root) {
  const auto nonzero = manifest_nonzero(root / "MANIFEST.csv");
  int checked = 0;
  for (const auto& s : samples) {
    if (!s.mask) continue;
    const auto rel = fs::relative(*s.mask, root).generic_string();
    ASSERT_TRUE(nonzero.count(rel)) << rel;
    const auto m = data::load_mask(*s.mask);
    EXPECT_EQ(m.scalar_type(), torch::kUInt8);
    EXPECT_EQ(m.max().item<int>(), 1) << rel;
    EXPECT_EQ(m.sum().item<int64_t>(), nonzero.at(rel)) << rel;
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(nonzero.size()) - (root.filename() == "mvtec3d" ? 2 : 0))
      << "every defect mask listed once (MVTec 3D-AD good gt are not used)";
}

TEST(MvtecAd, GridListsTrainTestAndMasksWithMaskSuffix) {
  const auto root = test::data("mvtec_ad");
  EXPECT_EQ(data::categories(Kind::MVTecAD, root), std::vector<std::string>{"grid"});
  const auto s = data::list_samples(Kind::MVTecAD, root, "grid");
  EXPECT_EQ(count_by_defect(s, Split::Train), (std::map<std::string, int>{{"good", 10}}));
  EXPECT_EQ(count_by_defect(s, Split::Test),
            (std::map<std::string, int>{{"bent", 3}, {"broken", 2}, {"good", 3}, {"thread", 2}}));
  for (const auto& x : s) {
    EXPECT_EQ(x.category, "grid");
    EXPECT_EQ(x.label, x.defect == "good" ? 0 : 1);
    EXPECT_EQ(x.mask.has_value(), x.label == 1);
    if (x.mask) {
      EXPECT_EQ(x.mask->filename().string(), x.image.stem().string() + "_mask.png");
      EXPECT_EQ(x.mask->parent_path().filename(), x.defect);
    }
  }
  expect_masks_match_manifest(s, root);
  const auto good = std::find_if(s.begin(), s.end(), [](const auto& x) { return x.split == Split::Test && !x.label; });
  EXPECT_EQ(data::sample_mask(*good, 1024, 1024).sum().item<int64_t>(), 0);
}

TEST(MvtecAd, HazelnutToyMasksWithoutSuffix) {
  const auto root = test::data("hazelnut_toy");
  const auto s = data::mvtec_ad(root, "hazelnut");
  EXPECT_EQ(count_by_defect(s, Split::Train), (std::map<std::string, int>{{"good", 10}}));
  EXPECT_EQ(count_by_defect(s, Split::Test), (std::map<std::string, int>{{"colour", 4}, {"good", 4}}));
  for (const auto& x : s) {
    if (x.mask) {
      EXPECT_EQ(x.mask->filename().string(), x.image.stem().string() + ".png");
    }
  }
  expect_masks_match_manifest(s, root);
}

TEST(Mvtec3d, TireRgbWithClassCodedGroundTruth) {
  const auto root = test::data("mvtec3d");
  EXPECT_EQ(data::categories(Kind::MVTec3D, root), std::vector<std::string>{"tire"});
  const auto s = data::list_samples(Kind::MVTec3D, root, "tire");
  EXPECT_EQ(count_by_defect(s, Split::Train), (std::map<std::string, int>{{"good", 6}}));
  EXPECT_EQ(count_by_defect(s, Split::Test),
            (std::map<std::string, int>{{"combined", 1}, {"contamination", 2}, {"cut", 2}, {"good", 2}, {"hole", 2}}));
  for (const auto& x : s) {
    EXPECT_EQ(x.image.parent_path().filename(), "rgb");
    if (x.mask) {
      EXPECT_EQ(x.mask->parent_path().filename(), "gt");
      EXPECT_EQ(x.mask->filename(), x.image.filename());
    }
  }
  // gt values 253/254/255 (class codes) -> 1: `> 0`.
  expect_masks_match_manifest(s, root);
  const auto cut = std::find_if(s.begin(), s.end(), [](const auto& x) { return x.defect == "cut"; });
  EXPECT_EQ(data::sample_mask(*cut, 800, 600).size(0), 800);
  EXPECT_THROW(data::sample_mask(*cut, 600, 800), InputError);  // HxW mismatch is named
}

// A tiny VisA tree: split_csv/1cls.csv + candle/Data/{Images,Masks} with copies of real files.
fs::path make_visa(const std::string& name) {
  const auto root = test::scratch("data-visa-" + name);
  const auto img_n = root / "candle/Data/Images/Normal", img_a = root / "candle/Data/Images/Anomaly",
             masks = root / "candle/Data/Masks/Anomaly";
  fs::create_directories(img_n);
  fs::create_directories(img_a);
  fs::create_directories(masks);
  const auto hz = test::data("hazelnut_toy/hazelnut");
  fs::copy_file(hz / "train/good/00.jpg", img_n / "0000.JPG", fs::copy_options::overwrite_existing);
  fs::copy_file(hz / "test/good/04.jpg", img_n / "0001.JPG", fs::copy_options::overwrite_existing);
  fs::copy_file(hz / "test/colour/00.jpg", img_a / "000.JPG", fs::copy_options::overwrite_existing);
  // A class-coded mask (values 0/254) checks the `!= 0` rule.
  fs::copy_file(test::data("mvtec3d/tire/test/cut/gt/000.png"), masks / "000.png",
                fs::copy_options::overwrite_existing);
  fs::create_directories(root / "split_csv");
  std::ofstream(root / "split_csv/1cls.csv") << "object,split,label,image,mask\n"
                                                "candle,train,normal,candle/Data/Images/Normal/0000.JPG,\n"
                                                "candle,test,normal,candle/Data/Images/Normal/0001.JPG,\n"
                                                "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,"
                                                "candle/Data/Masks/Anomaly/000.png\n";
  return root;
}

TEST(Visa, ReadsSplitCsvAndBinarisesMasksNonZero) {
  const auto root = make_visa("ok");
  EXPECT_EQ(data::categories(Kind::VisA, root), std::vector<std::string>{"candle"});
  const auto s = data::list_samples(Kind::VisA, root, "candle");
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(count_by_defect(s, Split::Train), (std::map<std::string, int>{{"good", 1}}));
  EXPECT_EQ(count_by_defect(s, Split::Test), (std::map<std::string, int>{{"anomaly", 1}, {"good", 1}}));
  const auto& a = *std::find_if(s.begin(), s.end(), [](const auto& x) { return x.label == 1; });
  ASSERT_TRUE(a.mask);
  const auto m = data::load_mask(*a.mask);
  const auto nonzero = manifest_nonzero(test::data("mvtec3d/MANIFEST.csv"));
  EXPECT_EQ(m.sum().item<int64_t>(), nonzero.at("tire/test/cut/gt/000.png"));
  EXPECT_EQ(m.max().item<int>(), 1);
}

void expect_input_error(const std::function<void()>& f, const std::string& says) {
  try {
    f();
    ADD_FAILURE() << "accepted; expected an error saying " << says;
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
  }
}

TEST(Visa, MalformedCsvAndMissingFilesAreNamed) {
  const auto root = make_visa("bad");
  fs::remove(root / "candle/Data/Images/Normal/0001.JPG");
  expect_input_error([&] { data::visa(root, "candle"); }, "0001.JPG");
  expect_input_error([&] { data::visa(root, "pcb1"); }, "no rows for object 'pcb1'");
  std::ofstream(root / "split_csv/1cls.csv") << "object,split,label,image\ncandle,train,normal,x.JPG\n";
  expect_input_error([&] { data::visa(root, "candle"); }, "no column 'mask'");
  fs::remove(root / "split_csv/1cls.csv");
  expect_input_error([&] { data::visa(root, "candle"); }, "split_csv/1cls.csv");
}

TEST(MvtecAd, MalformedLayoutsNameTheMissingPath) {
  const auto root = test::data("mvtec_ad");
  expect_input_error([&] { data::mvtec_ad(root, "bottle"); }, (root / "bottle").string());
  // A copy of grid with one mask removed.
  const auto copy = test::scratch("data-mvtec-bad");
  fs::create_directories(copy / "grid/train/good");
  fs::create_directories(copy / "grid/test/bent");
  fs::create_directories(copy / "grid/ground_truth/bent");
  fs::copy_file(root / "grid/train/good/000.png", copy / "grid/train/good/000.png", fs::copy_options::overwrite_existing);
  fs::copy_file(root / "grid/test/bent/000.png", copy / "grid/test/bent/000.png", fs::copy_options::overwrite_existing);
  fs::copy_file(root / "grid/test/bent/001.png", copy / "grid/test/bent/001.png", fs::copy_options::overwrite_existing);
  fs::copy_file(root / "grid/ground_truth/bent/000_mask.png", copy / "grid/ground_truth/bent/000_mask.png",
                fs::copy_options::overwrite_existing);
  expect_input_error([&] { data::mvtec_ad(copy, "grid"); }, "no mask for " + (copy / "grid/test/bent/001.png").string());
  fs::remove_all(copy / "grid/ground_truth");
  expect_input_error([&] { data::mvtec_ad(copy, "grid"); }, (copy / "grid/ground_truth/bent").string());
  fs::remove_all(copy / "grid/train");
  expect_input_error([&] { data::mvtec_ad(copy, "grid"); }, (copy / "grid/train/good").string());
  expect_input_error([&] { data::mvtec3d(root, "grid"); }, "rgb");
  expect_input_error([] { data::parse_kind("coco"); }, "unknown dataset kind 'coco'");
}

TEST(Folder, NormalAbnormalAndMasksByStem) {
  const auto root = test::scratch("data-folder");
  fs::create_directories(root / "normal");
  fs::create_directories(root / "abnormal");
  fs::create_directories(root / "masks");
  const auto hz = test::data("hazelnut_toy/hazelnut");
  fs::copy_file(hz / "train/good/00.jpg", root / "normal/a.jpg", fs::copy_options::overwrite_existing);
  fs::copy_file(hz / "test/colour/00.jpg", root / "abnormal/b.jpg", fs::copy_options::overwrite_existing);
  fs::copy_file(hz / "ground_truth/colour/00.png", root / "masks/b_mask.png", fs::copy_options::overwrite_existing);
  const auto s = data::list_samples(Kind::Folder, root, "");
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].split, Split::Train);
  EXPECT_EQ(s[0].label, 0);
  EXPECT_EQ(s[1].label, 1);
  ASSERT_TRUE(s[1].mask);
  EXPECT_EQ(s[1].mask->filename(), "b_mask.png");
  fs::remove(root / "masks/b_mask.png");
  expect_input_error([&] { data::list_samples(Kind::Folder, root, ""); }, "no mask for");
  fs::remove_all(root / "abnormal");
  expect_input_error([&] { data::list_samples(Kind::Folder, root, ""); }, (root / "abnormal").string());
}

}  // namespace
