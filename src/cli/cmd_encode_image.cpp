// `iadgpt encode-image`: images (or given pixel values) → global embedding and block taps of a
// CLIP-family vision tower, written as safetensors (METHOD §1.1–1.2).
#include <fmt/format.h>

#include <chrono>
#include <iostream>

#include "cli/commands.h"
#include "image/decode.h"
#include "image/preprocess.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "vision/loader.h"
#include "vision/vit.h"

namespace iadgpt::cli {
namespace {

std::vector<int64_t> parse_taps(const std::string& s) {
  std::vector<int64_t> taps;
  size_t start = 0;
  while (start < s.size()) {
    size_t end = s.find(',', start);
    if (end == std::string::npos) end = s.size();
    const auto item = s.substr(start, end - start);
    size_t used = 0;
    int64_t v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || v < 0) {
      throw InputError(fmt::format("--taps: '{}' is not a list of block indices like 7,15,23,31", s));
    }
    taps.push_back(v);
    start = end + 1;
  }
  return taps;
}

torch::Dtype parse_dtype(const std::string& s) {
  if (s == "f32" || s == "fp32") return torch::kFloat32;
  if (s == "bf16") return torch::kBFloat16;
  throw InputError(fmt::format("--dtype: '{}' (expected f32 or bf16)", s));
}

}  // namespace

void add_encode_image(CLI::App& app) {
  struct Opts {
    std::string model, config, family, taps, dtype = "f32", quant = "none", pixel_values, key = "pixel_values", out;
    std::string view = "encoder", resampler = "pil";
    std::vector<std::string> images;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("encode-image", "Encode images with a CLIP-family vision tower (embedding + taps)");
  cmd->add_option("--model", o->model, "Checkpoint file or Hugging Face directory")->required();
  cmd->add_option("--config", o->config, "JSON config (ImageBind/HF config.json, or {\"heads\": n, \"family\": ...})");
  cmd->add_option("--family", o->family, "Override family detection: imagebind, openai, openclip, hf");
  cmd->add_option("--taps", o->taps, "Comma-separated 0-based blocks to write as tap.<i> (default: four evenly spaced)");
  cmd->add_option("--dtype", o->dtype, "f32 or bf16")->capture_default_str();
  cmd->add_option("--quant", o->quant, "none or q8: the blocks' matrices in int8 (CPU)")->capture_default_str();
  cmd->add_option("--pixel-values", o->pixel_values, "Encode this safetensors tensor [n,3,S,S] instead of images");
  cmd->add_option("--key", o->key, "Tensor name in --pixel-values")->capture_default_str();
  cmd->add_option("--view", o->view, "encoder (short side + centre crop) or map (whole image to S×S)")->capture_default_str();
  cmd->add_option("--resampler", o->resampler, "pil (PIL-exact bicubic), cv-cubic or cv-area")->capture_default_str();
  cmd->add_option("images", o->images, "Image files (PNG, JPEG, BMP, TIFF)");
  cmd->add_option("--out", o->out, "Output .safetensors")->required();
  cmd->callback([o] {
    using clock = std::chrono::steady_clock;
    if (o->images.empty() == o->pixel_values.empty()) {
      throw InputError("encode-image: give either image files or --pixel-values FILE (not both, not neither)");
    }
    if (o->view != "encoder" && o->view != "map") throw InputError(fmt::format("--view: '{}' (expected encoder or map)", o->view));
    const auto resampler = image::parse_resampler(o->resampler);
    vision::VisionOptions vo{.dtype = parse_dtype(o->dtype), .quant = vision::parse_vision_quant(o->quant, "--quant")};
    if (!o->family.empty()) vo.family = vision::parse_family(o->family);
    if (!o->config.empty()) vo.config = vision::read_config_file(o->config);

    const auto t0 = clock::now();
    const auto model = vision::load_vision(std::filesystem::path(o->model), vo);
    const auto taps = o->taps.empty() ? model.config.default_taps() : parse_taps(o->taps);
    const auto t1 = clock::now();

    torch::Tensor pixels;
    if (!o->pixel_values.empty()) {
      const auto t = io::load_safetensors(o->pixel_values);
      auto it = t.find(o->key);
      if (it == t.end()) throw InputError(fmt::format("{}: no tensor '{}'", o->pixel_values, o->key));
      pixels = it->second.to(torch::kFloat32).contiguous();
    } else {
      std::vector<torch::Tensor> views;
      const int S = static_cast<int>(model.config.image_size);
      for (const auto& path : o->images) {
        const auto rgb = image::decode_file(path);
        views.push_back(o->view == "map" ? image::clip_map_view(rgb, S, resampler)
                                         : image::clip_encoder_view(rgb, S, resampler));
      }
      pixels = torch::stack(views);
    }
    const auto t2 = clock::now();
    const auto out = vision::vit_forward(model.weights, model.config, pixels, taps);
    const auto t3 = clock::now();

    io::TensorMap result = {{"pixel_values", pixels}, {"embedding", out.embedding}, {"embedding_raw", out.embedding_raw}};
    for (size_t k = 0; k < taps.size(); ++k) result[fmt::format("tap.{}", taps[k])] = out.taps[k];
    const std::string quant = nn::quant_format_name(model.quant);  // as asked, or as the file is stored
    io::save_safetensors(o->out, result,
                         {{"family", std::string(vision::family_name(model.config.family))}, {"dtype", o->dtype}, {"quant", quant}});
    auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
    std::cerr << fmt::format("encode-image: {} ({}{}), load {:.0f} ms, preprocess {:.0f} ms, encode {:.0f} ms "
                             "({:.1f} ms/image), wrote {}\n",
                             vision::family_name(model.config.family), o->dtype,
                             quant == "none" ? "" : "+" + quant, ms(t0, t1), ms(t1, t2), ms(t2, t3),
                             ms(t2, t3) / pixels.size(0), o->out);
  });
}

}  // namespace iadgpt::cli
