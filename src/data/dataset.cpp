#include "data/dataset.h"

#include <fmt/format.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/core.hpp>

#include <algorithm>
#include <array>
#include <fstream>
#include <map>
#include <set>

#include "io/error.h"

namespace iadgpt::data {
namespace fs = std::filesystem;
namespace {

// anomalib's IMG_EXTENSIONS (lower-case comparison: VisA ships .JPG).
constexpr std::array<std::string_view, 16> kImageExtensions = {
    ".bmp", ".dib", ".jpeg", ".jpg", ".jpe", ".jp2", ".png", ".webp",
    ".pbm", ".pgm", ".ppm", ".pam", ".sr", ".ras", ".tiff", ".tif"};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool is_image(const fs::path& p) {
  const auto ext = lower(p.extension().string());
  return std::find(kImageExtensions.begin(), kImageExtensions.end(), ext) != kImageExtensions.end();
}

void require_dir(const fs::path& p, std::string_view what) {
  if (!fs::is_directory(p)) throw InputError(fmt::format("{}: missing folder {}", what, p.string()));
}

void require_file(const fs::path& p, std::string_view what) {
  if (!fs::is_regular_file(p)) throw InputError(fmt::format("{}: missing file {}", what, p.string()));
}

// Image files directly inside dir, sorted by name.
std::vector<fs::path> images_in(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file() && is_image(e.path())) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<fs::path> subdirs(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_directory()) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The mask of image NNN.* among the files of a mask folder: NNN_mask.<ext> first, else NNN.<ext>.
std::optional<fs::path> find_mask(const std::vector<fs::path>& masks, const fs::path& image) {
  const auto stem = image.stem().string();
  for (const auto& candidate : masks) {
    if (candidate.stem().string() == stem + "_mask") return candidate;
  }
  for (const auto& candidate : masks) {
    if (candidate.stem().string() == stem) return candidate;
  }
  return std::nullopt;
}

void sort_samples(std::vector<Sample>& v) {
  std::sort(v.begin(), v.end(), [](const Sample& a, const Sample& b) {
    return std::tie(a.category, a.split, a.defect, a.image) < std::tie(b.category, b.split, b.defect, b.image);
  });
}

// test/<defect>/ images with masks from mask_dir_of(defect); "good" = normal, no mask.
template <class ImageDirOf, class MaskDirOf>
void add_test_split(const fs::path& test_dir, const std::string& category, ImageDirOf image_dir_of,
                    MaskDirOf mask_dir_of, std::string_view what, std::vector<Sample>& out) {
  for (const auto& defect_dir : subdirs(test_dir)) {
    const auto defect = defect_dir.filename().string();
    const auto dir = image_dir_of(defect_dir);
    require_dir(dir, what);
    const bool good = defect == "good";
    const auto mask_dir = mask_dir_of(defect);
    std::vector<fs::path> masks;
    if (!good) {
      require_dir(mask_dir, what);
      masks = images_in(mask_dir);
    }
    for (const auto& img : images_in(dir)) {
      Sample s{img, good ? 0 : 1, std::nullopt, defect, Split::Test, category};
      if (!good) {
        s.mask = find_mask(masks, img);
        if (!s.mask) {
          throw InputError(fmt::format("{}: no mask for {} (expected {} or {} in {})", what, img.string(),
                                       img.stem().string() + "_mask.png", img.stem().string() + ".png",
                                       mask_dir.string()));
        }
      }
      out.push_back(std::move(s));
    }
  }
}

// Minimal CSV: comma-separated, optional double quotes around fields (VisA has none).
std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false;
  for (char c : line) {
    if (c == '"') {
      quoted = !quoted;
    } else if (c == ',' && !quoted) {
      out.push_back(cur);
      cur.clear();
    } else if (c != '\r') {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

struct CsvTable {
  std::map<std::string, size_t> column;
  std::vector<std::vector<std::string>> rows;
};

CsvTable read_visa_csv(const fs::path& path) {
  require_file(path, "VisA");
  std::ifstream f(path);
  std::string line;
  if (!std::getline(f, line)) throw InputError(fmt::format("VisA: {} is empty", path.string()));
  CsvTable t;
  const auto header = split_csv_line(line);
  for (size_t i = 0; i < header.size(); ++i) t.column[header[i]] = i;
  for (const char* c : {"object", "split", "label", "image", "mask"}) {
    if (!t.column.count(c)) {
      throw InputError(fmt::format("VisA: {} has no column '{}' (expected object,split,label,image,mask)",
                                   path.string(), c));
    }
  }
  size_t line_no = 1;
  while (std::getline(f, line)) {
    ++line_no;
    if (line.empty() || line == "\r") continue;
    auto row = split_csv_line(line);
    if (row.size() != header.size()) {
      throw InputError(fmt::format("VisA: {} line {} has {} fields, expected {}", path.string(), line_no,
                                   row.size(), header.size()));
    }
    t.rows.push_back(std::move(row));
  }
  return t;
}

}  // namespace

Kind parse_kind(std::string_view name) {
  const auto n = lower(std::string(name));
  if (n == "mvtec" || n == "mvtec_ad" || n == "mvtecad") return Kind::MVTecAD;
  if (n == "visa") return Kind::VisA;
  if (n == "mvtec3d" || n == "mvtec_3d" || n == "mvtec3d-ad") return Kind::MVTec3D;
  if (n == "folder") return Kind::Folder;
  throw InputError(fmt::format("unknown dataset kind '{}' (expected mvtec, visa, mvtec3d or folder)", name));
}

std::string_view kind_name(Kind kind) {
  switch (kind) {
    case Kind::MVTecAD: return "mvtec";
    case Kind::VisA: return "visa";
    case Kind::MVTec3D: return "mvtec3d";
    case Kind::Folder: return "folder";
  }
  return "?";
}

std::string_view split_name(Split split) {
  switch (split) {
    case Split::Train: return "train";
    case Split::Val: return "val";
    case Split::Test: return "test";
  }
  return "?";
}

std::vector<std::string> categories(Kind kind, const fs::path& root) {
  require_dir(root, kind_name(kind));
  std::vector<std::string> out;
  if (kind == Kind::Folder) return {"folder"};
  if (kind == Kind::VisA) {
    const auto t = read_visa_csv(root / "split_csv" / "1cls.csv");
    std::set<std::string> names;
    for (const auto& r : t.rows) names.insert(r[t.column.at("object")]);
    return {names.begin(), names.end()};
  }
  for (const auto& d : subdirs(root)) {
    if (fs::is_directory(d / "train") && fs::is_directory(d / "test")) out.push_back(d.filename().string());
  }
  if (out.empty()) {
    throw InputError(fmt::format("{}: no category folder with train/ and test/ under {}", kind_name(kind),
                                 root.string()));
  }
  return out;
}

std::vector<Sample> mvtec_ad(const fs::path& root, const std::string& category) {
  const fs::path dir = root / category;
  require_dir(dir, "MVTec AD");
  require_dir(dir / "train" / "good", "MVTec AD");
  require_dir(dir / "test", "MVTec AD");
  std::vector<Sample> out;
  for (const auto& img : images_in(dir / "train" / "good")) {
    out.push_back({img, 0, std::nullopt, "good", Split::Train, category});
  }
  const fs::path gt = dir / "ground_truth";
  add_test_split(
      dir / "test", category, [](const fs::path& d) { return d; },
      [&](const std::string& defect) { return gt / defect; }, "MVTec AD", out);
  sort_samples(out);
  return out;
}

std::vector<Sample> mvtec3d(const fs::path& root, const std::string& category) {
  const fs::path dir = root / category;
  require_dir(dir, "MVTec 3D-AD");
  require_dir(dir / "train" / "good" / "rgb", "MVTec 3D-AD");
  require_dir(dir / "test", "MVTec 3D-AD");
  std::vector<Sample> out;
  for (const auto& img : images_in(dir / "train" / "good" / "rgb")) {
    out.push_back({img, 0, std::nullopt, "good", Split::Train, category});
  }
  if (fs::is_directory(dir / "validation" / "good" / "rgb")) {
    for (const auto& img : images_in(dir / "validation" / "good" / "rgb")) {
      out.push_back({img, 0, std::nullopt, "good", Split::Val, category});
    }
  }
  add_test_split(
      dir / "test", category, [](const fs::path& d) { return d / "rgb"; },
      [&](const std::string& defect) { return dir / "test" / defect / "gt"; }, "MVTec 3D-AD", out);
  sort_samples(out);
  return out;
}

std::vector<Sample> visa(const fs::path& root, const std::string& category, const fs::path& csv) {
  require_dir(root, "VisA");
  const fs::path csv_path = root / csv;
  const auto t = read_visa_csv(csv_path);
  const size_t c_obj = t.column.at("object"), c_split = t.column.at("split"), c_label = t.column.at("label"),
               c_image = t.column.at("image"), c_mask = t.column.at("mask");
  std::vector<Sample> out;
  for (const auto& r : t.rows) {
    if (r[c_obj] != category) continue;
    Sample s;
    s.category = category;
    const auto& split = r[c_split];
    if (split == "train") {
      s.split = Split::Train;
    } else if (split == "test") {
      s.split = Split::Test;
    } else if (split == "val") {
      s.split = Split::Val;
    } else {
      throw InputError(fmt::format("VisA: {}: split '{}' for {} (expected train or test)", csv_path.string(),
                                   split, r[c_image]));
    }
    const auto& label = r[c_label];
    if (label == "normal") {
      s.label = 0;
      s.defect = "good";
    } else if (label == "anomaly") {
      s.label = 1;
      s.defect = "anomaly";
    } else {
      throw InputError(fmt::format("VisA: {}: label '{}' for {} (expected normal or anomaly)", csv_path.string(),
                                   label, r[c_image]));
    }
    s.image = root / r[c_image];
    require_file(s.image, fmt::format("VisA ({})", csv_path.filename().string()));
    if (!r[c_mask].empty()) {
      s.mask = root / r[c_mask];
      require_file(*s.mask, fmt::format("VisA ({})", csv_path.filename().string()));
    } else if (s.label == 1) {
      throw InputError(fmt::format("VisA: {}: anomalous image {} has no mask", csv_path.string(), r[c_image]));
    }
    out.push_back(std::move(s));
  }
  if (out.empty()) throw InputError(fmt::format("VisA: no rows for object '{}' in {}", category, csv_path.string()));
  sort_samples(out);
  return out;
}

std::vector<Sample> folder(const FolderLayout& layout) {
  require_dir(layout.root, "Folder dataset");
  const fs::path normal = layout.root / layout.normal_dir;
  const fs::path abnormal = layout.root / layout.abnormal_dir;
  require_dir(normal, "Folder dataset");
  require_dir(abnormal, "Folder dataset");
  const fs::path masks = layout.mask_dir.empty() ? fs::path() : layout.root / layout.mask_dir;
  std::vector<Sample> out;
  for (const auto& img : images_in(normal)) out.push_back({img, 0, std::nullopt, "good", Split::Train, "folder"});
  if (!layout.normal_test_dir.empty()) {
    const fs::path nt = layout.root / layout.normal_test_dir;
    require_dir(nt, "Folder dataset");
    for (const auto& img : images_in(nt)) out.push_back({img, 0, std::nullopt, "good", Split::Test, "folder"});
  }
  const bool have_masks = !masks.empty() && fs::is_directory(masks);
  const auto mask_files = have_masks ? images_in(masks) : std::vector<fs::path>{};
  for (const auto& img : images_in(abnormal)) {
    Sample s{img, 1, std::nullopt, layout.abnormal_dir, Split::Test, "folder"};
    if (have_masks) {
      s.mask = find_mask(mask_files, img);
      if (!s.mask) {
        throw InputError(fmt::format("Folder dataset: no mask for {} in {} (expected {} or {})", img.string(),
                                     masks.string(), img.stem().string() + ".png",
                                     img.stem().string() + "_mask.png"));
      }
    }
    out.push_back(std::move(s));
  }
  sort_samples(out);
  return out;
}

std::vector<Sample> list_samples(Kind kind, const fs::path& root, const std::string& category) {
  switch (kind) {
    case Kind::MVTecAD: return mvtec_ad(root, category);
    case Kind::MVTec3D: return mvtec3d(root, category);
    case Kind::VisA: return visa(root, category);
    case Kind::Folder: return folder(FolderLayout{root});
  }
  throw std::logic_error("list_samples: unknown kind");
}

torch::Tensor load_mask(const fs::path& path) {
  require_file(path, "mask");
  cv::Mat m = cv::imread(path.string(), cv::IMREAD_UNCHANGED);
  if (m.empty()) throw InputError(fmt::format("mask: cannot decode {}", path.string()));
  if (m.channels() > 1) {
    std::vector<cv::Mat> ch;
    cv::split(m, ch);
    m = ch[0].clone();
    for (size_t i = 1; i < ch.size(); ++i) cv::max(m, ch[i], m);
  }
  cv::Mat binary;
  cv::compare(m, 0, binary, cv::CmpTypes::CMP_NE);  // 255 where nonzero
  auto t = torch::empty({binary.rows, binary.cols}, torch::kUInt8);
  for (int y = 0; y < binary.rows; ++y) {
    const uint8_t* src = binary.ptr<uint8_t>(y);
    uint8_t* dst = t.data_ptr<uint8_t>() + static_cast<int64_t>(y) * binary.cols;
    for (int x = 0; x < binary.cols; ++x) dst[x] = src[x] ? 1 : 0;
  }
  return t;
}

torch::Tensor sample_mask(const Sample& sample, int64_t h, int64_t w) {
  if (!sample.mask) return torch::zeros({h, w}, torch::kUInt8);
  auto m = load_mask(*sample.mask);
  if (m.size(0) != h || m.size(1) != w) {
    throw InputError(fmt::format("mask {} is {}x{} (HxW) but its image is {}x{}", sample.mask->string(), m.size(0),
                                 m.size(1), h, w));
  }
  return m;
}

}  // namespace iadgpt::data
