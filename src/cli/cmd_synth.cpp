// `iadgpt synth`: synthetic anomalies from a category's normal training images (METHOD §3.1),
// written out so a user can look at them: NNN.png (synthetic), NNN_mask.png (binarised mask ×255)
// and samples.jsonl (the normal/synthetic training pair of every image, with its answer).
#include <fmt/format.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>

#include "cli/commands.h"
#include "data/dataset.h"
#include "data/synthesis.h"
#include "image/decode.h"
#include "io/error.h"

namespace iadgpt::cli {
namespace {
namespace fs = std::filesystem;

struct SynthFlags {
  std::string dataset, category, method = "nsa", textures, out;
  int64_t count = 10;
  uint64_t seed = 0;
};

bool is_image_file(const fs::path& p) {
  auto ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp" || ext == ".tif" || ext == ".tiff";
}

std::vector<fs::path> texture_files(const fs::path& dir) {
  if (!fs::is_directory(dir)) throw InputError(fmt::format("--textures: folder not found: {}", dir.string()));
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && is_image_file(e.path())) files.push_back(e.path());
  if (files.empty()) throw InputError(fmt::format("--textures: no image files under {}", dir.string()));
  std::sort(files.begin(), files.end());
  return files;
}

void write_png(const fs::path& path, const cv::Mat& img) {
  if (!cv::imwrite(path.string(), img)) throw std::runtime_error(fmt::format("cannot write {}", path.string()));
}

void run(const SynthFlags& f) {
  const auto method = data::parse_synthesis_method(f.method);
  if (f.count < 1) throw InputError("--count must be at least 1");
  const auto colon = f.dataset.find(':');
  if (colon == std::string::npos) throw InputError("--dataset must be KIND:DIR (mvtec, visa, mvtec3d, folder)");
  const auto kind = data::parse_kind(f.dataset.substr(0, colon));
  const fs::path root = f.dataset.substr(colon + 1);
  if (!fs::is_directory(root)) throw InputError(fmt::format("dataset folder not found: {}", root.string()));

  std::vector<fs::path> normals;
  for (const auto& s : data::list_samples(kind, root, f.category))
    if (s.split == data::Split::Train && s.label == 0) normals.push_back(s.image);
  if (normals.empty())
    throw InputError(fmt::format("{}: no normal training images for category '{}'", root.string(), f.category));
  if (method == data::SynthesisMethod::Nsa && normals.size() < 2)
    throw InputError(fmt::format("NSA needs at least two normal training images, '{}' has one", f.category));
  std::vector<fs::path> textures;
  if (method == data::SynthesisMethod::Perlin) {
    if (f.textures.empty()) throw InputError("--method perlin needs --textures DIR (e.g. DTD images)");
    textures = texture_files(f.textures);
  }

  fs::create_directories(f.out);
  std::ofstream jsonl(fs::path(f.out) / "samples.jsonl");
  if (!jsonl) throw InputError(fmt::format("cannot write {}", (fs::path(f.out) / "samples.jsonl").string()));

  data::SynthesisOptions options;
  options.nsa.cls = data::nsa_class(f.category);
  std::mt19937_64 rng(f.seed);
  for (int64_t i = 0; i < f.count; ++i) {
    const size_t index = static_cast<size_t>(i) % normals.size();
    const cv::Mat normal = image::decode_file(normals[index]);
    // One other normal image (or one texture) is decoded per sample: a class can have hundreds.
    std::vector<cv::Mat> others, texture;
    if (normals.size() > 1 && method != data::SynthesisMethod::Perlin) {
      size_t other = std::uniform_int_distribution<size_t>(0, normals.size() - 2)(rng);
      if (other >= index) ++other;  // any image but this one
      others.push_back(image::decode_file(normals[other]));
    }
    if (!textures.empty())
      texture.push_back(image::decode_file(textures[std::uniform_int_distribution<size_t>(0, textures.size() - 1)(rng)]));
    auto pair = data::make_pair(normal, data::synthesize(method, normal, others, texture, rng, options));

    const std::string stem = fmt::format("{:03d}", i);
    cv::Mat bgr;
    cv::cvtColor(pair.synthetic.image, bgr, cv::COLOR_RGB2BGR);
    write_png(fs::path(f.out) / (stem + ".png"), bgr);
    const auto mask = (pair.synthetic.mask * 255).to(torch::kUInt8).contiguous();
    write_png(fs::path(f.out) / (stem + "_mask.png"),
              cv::Mat(static_cast<int>(mask.size(0)), static_cast<int>(mask.size(1)), CV_8U, mask.data_ptr<uint8_t>()));

    nlohmann::json normal_line{{"image", fs::absolute(normals[index]).string()}, {"answer", pair.normal_answer},
                               {"label", 0}, {"mask", nullptr}};
    nlohmann::json synthetic_line{{"image", stem + ".png"}, {"answer", pair.anomaly_answer}, {"label", 1},
                                  {"mask", stem + "_mask.png"}, {"source", fs::absolute(normals[index]).string()},
                                  {"method", std::string(data::synthesis_method_name(method))},
                                  {"mask_pixels", pair.synthetic.mask.sum().item<int64_t>()}};
    jsonl << normal_line.dump() << '\n' << synthetic_line.dump() << '\n';
  }
  std::cout << fmt::format("wrote {} synthetic samples ({}) to {}\n", f.count, data::synthesis_method_name(method), f.out);
}

}  // namespace

void add_synth(CLI::App& app) {
  auto flags = std::make_shared<SynthFlags>();
  auto* cmd = app.add_subcommand("synth", "Write synthetic anomalies of a category's normal images (METHOD §3.1)");
  cmd->add_option("--dataset", flags->dataset, "KIND:DIR with KIND mvtec, visa, mvtec3d or folder")->required();
  cmd->add_option("--category", flags->category, "class name (folder layout: any)")->required();
  cmd->add_option("--method", flags->method, "nsa, cutpaste or perlin")->capture_default_str();
  cmd->add_option("--textures", flags->textures, "folder of texture images for perlin (searched recursively)");
  cmd->add_option("--count", flags->count, "synthetic samples to write (cycling over the training images)")->capture_default_str();
  cmd->add_option("--seed", flags->seed, "random seed")->capture_default_str();
  cmd->add_option("--out", flags->out, "output folder")->required();
  cmd->callback([flags] { run(*flags); });
}

}  // namespace iadgpt::cli
