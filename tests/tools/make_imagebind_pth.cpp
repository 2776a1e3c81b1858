// Writes a random-weight ImageBind-Huge checkpoint in the upstream torch.save layout (all six
// modalities' trunks, fp32, ~4 GB) for measuring load time and memory from the file users
// download. Not a test: run by hand, writing outside the repository.
//
//   build/make_imagebind_pth /tmp/imagebind_huge_random.pth
#include <fmt/format.h>

#include <iostream>

#include "common/imagebind_layout.h"

namespace {

using iadgpt::test::TensorSpec;
using iadgpt::test::add_imagebind_trunk;

// Shapes of imagebind_huge (ImageBind's imagebind_model.py): vision 1280×32, text 1024×24,
// audio 768×12, depth 384×12, thermal 768×12, imu 512×6, all projected to 1024.
std::vector<TensorSpec> imagebind_huge() {
  std::vector<TensorSpec> s;
  s.push_back({"modality_preprocessors.vision.cls_token", {1, 1, 1280}});
  s.push_back({"modality_preprocessors.vision.rgbt_stem.proj.1.weight", {1280, 3, 2, 14, 14}});
  s.push_back({"modality_preprocessors.vision.pos_embedding_helper.pos_embed", {1, 257, 1280}});
  add_imagebind_trunk(s, "modality_trunks.vision", 1280, 32);
  s.push_back({"modality_heads.vision.0.weight", {1280}});
  s.push_back({"modality_heads.vision.0.bias", {1280}});
  s.push_back({"modality_heads.vision.2.weight", {1024, 1280}});
  iadgpt::test::add_imagebind_text(s, 1024, 24, 1024);
  for (auto [name, d, blocks] : {std::tuple{"audio", 768, 12}, {"depth", 384, 12}, {"thermal", 768, 12}, {"imu", 512, 6}}) {
    add_imagebind_trunk(s, fmt::format("modality_trunks.{}", name), d, blocks);
    s.push_back({fmt::format("modality_heads.{}.2.weight", name), {1024, d}});
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 || argv[1][0] == '-') {  // `--help` is not a file name to write 4.8 GB to
    std::cerr << "usage: make_imagebind_pth OUT.pth  (a random ImageBind-Huge in upstream's .pth layout, 4.8 GB)\n";
    return argc == 2 && std::string(argv[1]) == "--help" ? 0 : 2;
  }
  torch::manual_seed(0);
  const auto specs = imagebind_huge();
  int64_t params = 0;
  for (const auto& t : specs) {
    int64_t n = 1;
    for (auto d : t.shape) n *= d;
    params += n;
  }
  std::cout << fmt::format("{} tensors, {} parameters, {:.2f} GB fp32\n", specs.size(), params, params * 4e-9);
  iadgpt::test::write_torch_save(argv[1], specs, [&](size_t i) { return iadgpt::test::imagebind_random_value(specs[i]); });
  return 0;
}
