#include <fmt/format.h>

#include <algorithm>

#include "anomaly/maps.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "llm/config.h"
#include "model/adapters.h"
#include "model/bundle.h"
#include "vision/loader.h"

namespace iadgpt::model {

void init_random_adapters(Bundle& bundle, uint64_t seed, const std::vector<std::string>& parts) {
  auto wants = [&](const char* p) { return std::find(parts.begin(), parts.end(), p) != parts.end(); };
  for (const auto& p : parts)
    if (p != "decoder" && p != "tge" && p != "mmf")
      throw InputError(fmt::format("unknown adapter '{}' (expected decoder, tge or mmf)", p));
  vision::VisionOptions vopt;
  vopt.config = bundle.vision_config;
  const auto vcfg = vision::infer_vit_config(io::load_checkpoint(bundle.vision, {.headers_only = true}), vopt);
  const auto hidden = llm::LlamaConfig::from_file(bundle.llm / "config.json").hidden_size;
  const int64_t layers = bundle.taps.empty() ? static_cast<int64_t>(vcfg.default_taps().size())
                                             : static_cast<int64_t>(bundle.taps.size());
  std::filesystem::create_directories(bundle.dir);
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"iadgpt", fmt::format("random adapters, seed {}", seed)}};
  if (wants("decoder")) {
    anomaly::VisualDecoder decoder(vcfg.width, vcfg.embed_dim, layers);
    bundle.decoder = bundle.dir / "decoder.safetensors";
    io::save_safetensors(*bundle.decoder, anomaly::decoder_tensors(decoder), meta);
  }
  if (wants("tge")) {
    TextGuidedEnhancer tge(vcfg.embed_dim, hidden);
    for (auto* path : {&tge->normal_path, &tge->abnormal_path}) {
      (*path)->weight.normal_(0, 0.02);
      (*path)->bias.normal_(0, 0.02);
    }
    bundle.tge = bundle.dir / "tge.safetensors";
    io::save_safetensors(*bundle.tge, parameter_tensors(*tge), meta);
  }
  if (wants("mmf")) {
    MultiMaskFusion mmf(hidden);
    bundle.mmf = bundle.dir / "mmf.safetensors";
    io::save_safetensors(*bundle.mmf, parameter_tensors(*mmf), meta);
  }
}

}  // namespace iadgpt::model
