// Benchmark datasets on disk (METHOD §4.4): MVTec AD, VisA (split_csv/1cls.csv), MVTec 3D-AD RGB
// and a generic Folder layout, listed as samples (image, label, mask, defect type, split).
//
//   auto samples = iadgpt::data::list_samples(iadgpt::data::Kind::MVTecAD, "/data/mvtec_ad", "grid");
//   for (const auto& s : samples) if (s.split == Split::Test) { auto m = load_mask(s, kind_of...); }
//
// Layout problems (missing category, split or mask) are InputError naming the missing path.
// Samples are sorted (split, defect, file name) so every run sees the same order.
// Thread-safety: pure functions over the filesystem.
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace iadgpt::data {

enum class Kind { MVTecAD, VisA, MVTec3D, Folder };
enum class Split { Train, Val, Test };

struct Sample {
  std::filesystem::path image;
  int label = 0;                               // 0 normal, 1 anomalous
  std::optional<std::filesystem::path> mask;   // none for normal images (or when a layout has none)
  std::string defect;                          // "good" for normal images; VisA: "anomaly"
  Split split = Split::Test;
  std::string category;
};

Kind parse_kind(std::string_view name);        // "mvtec", "visa", "mvtec3d", "folder"; InputError otherwise
std::string_view kind_name(Kind kind);
std::string_view split_name(Split split);

// Categories present under root: MVTec AD / 3D-AD: folders holding train/ and test/ (sorted);
// VisA: distinct `object` values of split_csv/1cls.csv; Folder: the single category "folder".
std::vector<std::string> categories(Kind kind, const std::filesystem::path& root);

// MVTec AD: <root>/<category>/{train/good, test/<defect>, ground_truth/<defect>/NNN_mask.png}.
// A defective test image NNN.* takes ground_truth/<defect>/NNN_mask.png or NNN.png (anomalib accepts
// both; the toy hazelnut set uses the latter).
std::vector<Sample> mvtec_ad(const std::filesystem::path& root, const std::string& category);
// MVTec 3D-AD, RGB only: <root>/<category>/{train/good/rgb, validation/good/rgb, test/<defect>/{rgb,gt}}.
std::vector<Sample> mvtec3d(const std::filesystem::path& root, const std::string& category);
// VisA: rows of <root>/<csv> (object,split,label,image,mask) with object == category; paths are
// relative to root; label "normal"/"anomaly".
std::vector<Sample> visa(const std::filesystem::path& root, const std::string& category,
                         const std::filesystem::path& csv = "split_csv/1cls.csv");

// Folder: normal images (train), abnormal images (test), optional masks matched by stem
// (NNN.png or NNN_mask.png), optional separate normal test images.
struct FolderLayout {
  std::filesystem::path root;
  std::string normal_dir = "normal";
  std::string abnormal_dir = "abnormal";
  std::string mask_dir = "masks";          // optional: absent folder = no masks
  std::string normal_test_dir;             // optional: normal test images
};
std::vector<Sample> folder(const FolderLayout& layout);

// Dispatch (Folder uses FolderLayout{root} with the default folder names; category ignored).
std::vector<Sample> list_samples(Kind kind, const std::filesystem::path& root, const std::string& category);

// Loads a mask as U8 [H,W] with values 0/1: every dataset's rule is "anomalous iff value != 0"
// (MVTec AD {0,255}; VisA class ids, `!= 0`; MVTec 3D-AD class codes 253..255, `> 0`). Multi-channel
// (palette) masks count a pixel when any channel is nonzero.
torch::Tensor load_mask(const std::filesystem::path& path);
// The sample's mask, or zeros [h,w] for a normal image without one.
torch::Tensor sample_mask(const Sample& sample, int64_t h, int64_t w);

}  // namespace iadgpt::data
