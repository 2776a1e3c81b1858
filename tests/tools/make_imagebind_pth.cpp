// Writes a random-weight ImageBind-Huge checkpoint in the upstream torch.save layout (all six
// modalities' trunks, fp32, ~4 GB) for measuring load time and memory from the file users
// download. Not a test: run by hand, writing outside the repository.
//
//   build/make_imagebind_pth /tmp/imagebind_huge_random.pth
#include <fmt/format.h>

#include <iostream>
#include <limits>

#include "common/torch_save.h"

namespace {

using iadgpt::test::TensorSpec;

// One pre-LN transformer trunk under `prefix` (ImageBind's block names), width d, MLP 4d.
void add_trunk(std::vector<TensorSpec>& s, const std::string& prefix, int64_t d, int64_t blocks) {
  s.push_back({prefix + ".pre_transformer_layer.0.weight", {d}});
  s.push_back({prefix + ".pre_transformer_layer.0.bias", {d}});
  for (int64_t i = 0; i < blocks; ++i) {
    const auto b = fmt::format("{}.blocks.{}.", prefix, i);
    s.push_back({b + "attn.in_proj_weight", {3 * d, d}});
    s.push_back({b + "attn.in_proj_bias", {3 * d}});
    s.push_back({b + "attn.out_proj.weight", {d, d}});
    s.push_back({b + "attn.out_proj.bias", {d}});
    for (const char* ln : {"norm_1", "norm_2"}) {
      s.push_back({b + ln + ".weight", {d}});
      s.push_back({b + ln + ".bias", {d}});
    }
    s.push_back({b + "mlp.fc1.weight", {4 * d, d}});
    s.push_back({b + "mlp.fc1.bias", {4 * d}});
    s.push_back({b + "mlp.fc2.weight", {d, 4 * d}});
    s.push_back({b + "mlp.fc2.bias", {d}});
  }
}

// Shapes of imagebind_huge (ImageBind's imagebind_model.py): vision 1280×32, text 1024×24,
// audio 768×12, depth 384×12, thermal 768×12, imu 512×6, all projected to 1024.
std::vector<TensorSpec> imagebind_huge() {
  std::vector<TensorSpec> s;
  s.push_back({"modality_preprocessors.vision.cls_token", {1, 1, 1280}});
  s.push_back({"modality_preprocessors.vision.rgbt_stem.proj.1.weight", {1280, 3, 2, 14, 14}});
  s.push_back({"modality_preprocessors.vision.pos_embedding_helper.pos_embed", {1, 257, 1280}});
  add_trunk(s, "modality_trunks.vision", 1280, 32);
  s.push_back({"modality_heads.vision.0.weight", {1280}});
  s.push_back({"modality_heads.vision.0.bias", {1280}});
  s.push_back({"modality_heads.vision.2.weight", {1024, 1280}});
  s.push_back({"modality_preprocessors.text.token_embedding.weight", {49408, 1024}});
  s.push_back({"modality_preprocessors.text.pos_embed", {1, 77, 1024}});
  s.push_back({"modality_preprocessors.text.mask", {77, 77}});  // a persistent buffer: the causal mask
  add_trunk(s, "modality_trunks.text", 1024, 24);
  s.push_back({"modality_heads.text.proj.0.weight", {1024}});
  s.push_back({"modality_heads.text.proj.0.bias", {1024}});
  s.push_back({"modality_heads.text.proj.1.weight", {1024, 1024}});
  s.push_back({"modality_postprocessors.text.1.log_logit_scale", {}});
  for (auto [name, d, blocks] : {std::tuple{"audio", 768, 12}, {"depth", 384, 12}, {"thermal", 768, 12}, {"imu", 512, 6}}) {
    add_trunk(s, fmt::format("modality_trunks.{}", name), d, blocks);
    s.push_back({fmt::format("modality_heads.{}.2.weight", name), {1024, d}});
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_imagebind_pth OUT.pth\n";
    return 2;
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
  iadgpt::test::write_torch_save(argv[1], specs, [&](size_t i) {
    // ImageBind's build_causal_attention_mask: -inf above the diagonal, 0 on and below it.
    if (specs[i].name == "modality_preprocessors.text.mask")
      return torch::full(specs[i].shape, -std::numeric_limits<float>::infinity()).triu(1);
    // Small random values (ViT-like init), so a forward on them stays finite.
    return torch::randn(specs[i].shape) * 0.02;
  });
  return 0;
}
