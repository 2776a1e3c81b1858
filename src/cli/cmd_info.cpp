// `iadgpt info PATH [--json]`: what a checkpoint is — format, tensors, parameters, dtypes, and for
// CLIP-family checkpoints the family and the vision tower's hyper-parameters.
#include <fmt/format.h>

#include <iostream>
#include <map>

#include "cli/commands.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "vision/family.h"
#include "vision/loader.h"

namespace iadgpt::cli {
namespace {

std::string format_name(io::Format f) {
  switch (f) {
    case io::Format::Safetensors: return "safetensors";
    case io::Format::TorchZip: return "pytorch-zip";
    case io::Format::TorchScript: return "torchscript";
    case io::Format::HuggingFaceDir: return "huggingface-dir";
  }
  return "?";
}

std::string activation_name(nn::Activation a) { return a == nn::Activation::Gelu ? "gelu" : "quick_gelu"; }

nlohmann::json describe(const io::Checkpoint& ckpt, const std::optional<vision::Family>& family_override,
                        const nlohmann::json& config) {
  nlohmann::json j;
  j["path"] = ckpt.path.string();
  j["format"] = format_name(ckpt.format);
  j["tensors"] = ckpt.tensors.size();
  int64_t params = 0;
  std::map<std::string, int64_t> dtypes;
  for (const auto& [k, t] : ckpt.tensors) {
    params += t.numel();
    dtypes[std::string(c10::toString(t.scalar_type()))] += 1;
  }
  j["parameters"] = params;
  j["dtypes"] = dtypes;
  if (ckpt.hf_config && ckpt.hf_config->is_object()) {
    j["model_type"] = ckpt.hf_config->value("model_type", std::string());
  }
  const auto family = vision::try_detect_family(
      ckpt.tensors, ckpt.hf_config, {.override_family = family_override, .format = ckpt.format, .path = ckpt.path});
  if (!family) return j;
  j["family"] = std::string(vision::family_name(*family));
  try {
    vision::VisionOptions o{.family = family};
    if (!config.is_null()) o.config = config;
    const auto c = vision::infer_vit_config(ckpt, o);
    j["vision"] = {{"image_size", c.image_size}, {"patch_size", c.patch_size}, {"width", c.width},
                   {"layers", c.layers},         {"heads", c.heads},           {"mlp_dim", c.mlp_dim},
                   {"embed_dim", c.embed_dim},   {"eps", c.eps},               {"activation", activation_name(c.activation)},
                   {"parameters", c.parameter_count()}, {"default_taps", c.default_taps()},
                   {"stored_quant", nn::quant_format_name(vision::stored_vision_quant(ckpt))}};
  } catch (const InputError& e) {
    j["vision_error"] = e.what();  // e.g. heads unknown without a config: still describe the file
  }
  return j;
}

void print_text(const nlohmann::json& j) {
  std::cout << fmt::format("path:       {}\nformat:     {}\ntensors:    {}\nparameters: {}\n",
                           j["path"].get<std::string>(), j["format"].get<std::string>(), j["tensors"].get<int64_t>(),
                           j["parameters"].get<int64_t>());
  std::cout << "dtypes:    ";
  for (const auto& [k, v] : j["dtypes"].items()) std::cout << " " << k << "×" << v.get<int64_t>();
  std::cout << "\n";
  if (j.contains("model_type")) std::cout << "model_type: " << j["model_type"].get<std::string>() << "\n";
  if (j.contains("family")) std::cout << "family:     " << j["family"].get<std::string>() << "\n";
  if (j.contains("vision")) {
    const auto& v = j["vision"];
    std::cout << fmt::format(
        "vision:     {}px patch {}, width {}, {} blocks, {} heads, mlp {}, embed {}, eps {}, {}, {} parameters{}\n",
        v["image_size"].get<int64_t>(), v["patch_size"].get<int64_t>(), v["width"].get<int64_t>(),
        v["layers"].get<int64_t>(), v["heads"].get<int64_t>(), v["mlp_dim"].get<int64_t>(),
        v["embed_dim"].get<int64_t>(), v["eps"].get<double>(), v["activation"].get<std::string>(),
        v["parameters"].get<int64_t>(),
        v["stored_quant"] == "none" ? "" : fmt::format(", block matrices stored {}", v["stored_quant"].get<std::string>()));
  }
  if (j.contains("vision_error")) std::cout << "vision:     " << j["vision_error"].get<std::string>() << "\n";
}

}  // namespace

void add_info(CLI::App& app) {
  struct Opts {
    std::string path, config, family;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("info", "Describe a checkpoint: format, family, hyper-parameters, parameters, dtypes");
  cmd->add_option("path", o->path, "Checkpoint file or Hugging Face directory")->required();
  cmd->add_flag("--json", o->json, "Print JSON");
  cmd->add_option("--config", o->config, "JSON config (e.g. ImageBind config.json, or {\"heads\": n})");
  cmd->add_option("--family", o->family, "Override family detection: imagebind, openai, openclip, hf");
  cmd->callback([o] {
    const auto ckpt = io::load_checkpoint(o->path, {.headers_only = true});  // no tensor data is read
    std::optional<vision::Family> fam;
    if (!o->family.empty()) fam = vision::parse_family(o->family);
    const auto j = describe(ckpt, fam, o->config.empty() ? nlohmann::json() : vision::read_config_file(o->config));
    if (o->json) {
      std::cout << j.dump(1) << "\n";
    } else {
      print_text(j);
    }
  });
}

}  // namespace iadgpt::cli
