// `iadgpt bundle create|check`: write and validate a model bundle (iadgpt.json + adapters).
#include <fmt/format.h>

#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "io/error.h"
#include "llm/config.h"
#include "llm/model.h"
#include "llm/options.h"
#include "nn/quant.h"
#include "model/bundle.h"
#include "vision/loader.h"

namespace iadgpt::cli {
namespace {

namespace fs = std::filesystem;

std::optional<fs::path> opt_path(const std::string& s) {
  if (s.empty()) return std::nullopt;
  return fs::absolute(s);
}

// What a bundle holds, in one JSON object (for `bundle check` and the logs).
nlohmann::json summary(const model::Bundle& b) {
  auto j = model::bundle_to_json(b);
  const auto cfg = llm::LlamaConfig::from_file(b.llm / "config.json");
  vision::VisionOptions vopt;
  vopt.config = b.vision_config;
  const auto v = vision::infer_vit_config(io::load_checkpoint(b.vision, {.headers_only = true}), vopt);
  j["widths"] = {{"vision_width", v.width}, {"embed_dim", v.embed_dim}, {"vision_blocks", v.layers},
                 {"llm_hidden", cfg.hidden_size}, {"llm_layers", cfg.num_layers}};
  j["taps_used"] = b.taps.empty() ? v.default_taps() : b.taps;
  return j;
}

}  // namespace

void add_bundle(CLI::App& app) {
  auto* cmd = app.add_subcommand("bundle", "Create or check an IAD-GPT model bundle (iadgpt.json + adapters)");
  cmd->require_subcommand(1);

  struct Create {
    std::string vision, text, vocab, vision_config, llm, tokenizer, lora, delta, anomalygpt, decoder, tge, mmf, prompts;
    std::string expert = "mmf", mode = "self-supervised", dtype = "f32", quant = "auto", vision_quant = "auto", out;
    std::vector<int64_t> taps;
    int64_t size = 224;
    double threshold = 0.5, lora_alpha = 32;
    int64_t init_random = -1;
  };
  auto c = std::make_shared<Create>();
  auto* create = cmd->add_subcommand("create", "Write <out>/iadgpt.json (validated) and, with --init-random, random adapters");
  create->add_option("--vision", c->vision, "Vision checkpoint (CLIP family; ImageBind-Huge for AnomalyGPT)")->required();
  create->add_option("--text", c->text, "Text tower checkpoint (default: the --vision file)");
  create->add_option("--vocab", c->vocab, "CLIP BPE vocabulary (default: beside the checkpoint)");
  create->add_option("--vision-config", c->vision_config, "JSON config for towers whose shapes do not tell (copied into the bundle)");
  create->add_option("--llm", c->llm, "Hugging Face LLaMA directory (config.json, weights, tokenizer.model)")->required();
  create->add_option("--tokenizer", c->tokenizer, "tokenizer.model when it is not in --llm");
  create->add_option("--lora", c->lora, "PEFT LoRA directory");
  create->add_option("--delta", c->delta, "PandaGPT delta (pytorch_model.pt: llama_proj + LoRA)");
  create->add_option("--anomalygpt", c->anomalygpt, "AnomalyGPT delta (image_decoder, prompt_learner, ...), loaded over --delta");
  create->add_option("--lora-alpha", c->lora_alpha, "LoRA alpha of the deltas (not stored in them)")->capture_default_str();
  create->add_option("--decoder", c->decoder, "Trained decoder (safetensors, fc.<l>.*)");
  create->add_option("--tge", c->tge, "Trained Text-Guided Enhancer (safetensors)");
  create->add_option("--mmf", c->mmf, "Trained Multi-Mask Fusion (safetensors)");
  create->add_option("--expert", c->expert, "mmf | prompt_learner (AnomalyGPT)")->capture_default_str();
  create->add_option("--prompts", c->prompts, "APG prompts file from `iadgpt apg` (default: built-in library)");
  create->add_option("--mode", c->mode, "self-supervised | few-shot")->capture_default_str();
  create->add_option("--taps", c->taps, "Tapped blocks, 0-based (default: the family's four)")->delimiter(',');
  create->add_option("--size", c->size, "Input side S")->capture_default_str();
  create->add_option("--dtype", c->dtype, "f32 | bf16 (towers and LLM)")->capture_default_str();
  create->add_option("--vision-quant", c->vision_quant,
                     "vision tower: auto (as stored: a tower written by `iadgpt convert --quant q8` runs in q8, any other "
                     "unquantized) | none | q8 (its matrices in int8 at load: faster encode on AVX-512 VNNI CPUs, CPU only)")
      ->capture_default_str();
  create->add_option("--quant", c->quant,
                     "LLM weights: auto (as stored: a directory written by `iadgpt quantize` runs in its format, any "
                     "other unquantized) | none | q8 | q4 (an unquantized LLM quantized at load)")
      ->capture_default_str();
  create->add_option("--threshold", c->threshold, "Map threshold for regions")->capture_default_str();
  create->add_option("--init-random", c->init_random,
                     "Write random adapters with this seed for every one not given (decoder, tge, mmf)");
  create->add_option("--out", c->out, "Bundle directory")->required();
  create->callback([c] {
    model::Bundle b;
    b.dir = fs::absolute(c->out);
    b.vision = fs::absolute(c->vision);
    b.text = opt_path(c->text);
    b.vocab = opt_path(c->vocab);
    if (!c->vision_config.empty()) b.vision_config = vision::read_config_file(c->vision_config);
    b.llm = fs::absolute(c->llm);
    b.tokenizer = opt_path(c->tokenizer);
    b.lora = opt_path(c->lora);
    b.delta = opt_path(c->delta);
    b.anomalygpt = opt_path(c->anomalygpt);
    b.lora_alpha = c->lora_alpha;
    b.decoder = opt_path(c->decoder);
    b.tge = opt_path(c->tge);
    b.mmf = opt_path(c->mmf);
    b.prompts = opt_path(c->prompts);
    b.expert = c->expert;
    b.mode = c->mode;
    b.dtype = c->dtype;
    b.vision_quant = c->vision_quant != "auto" ? c->vision_quant
                                               : nn::quant_format_name(vision::stored_vision_quant(
                                                     io::load_checkpoint(b.vision, {.headers_only = true})));
    b.taps = c->taps;
    b.image_size = c->size;
    b.threshold = c->threshold;
    if (!fs::exists(b.llm / "config.json"))
      throw InputError(fmt::format("--llm {}: no config.json (expected a Hugging Face LLaMA directory)", b.llm.string()));
    b.quant = c->quant == "auto" ? nn::quant_format_name(llm::stored_quant_format(b.llm / "config.json")) : c->quant;
    // Field checks first (nothing written for a typo or a format a model is not stored in), then files.
    b = model::bundle_from_json(model::bundle_to_json(b), b.dir);
    model::validate_llm_quant(b);
    model::validate_vision_quant(b);
    if (c->init_random >= 0) {
      std::vector<std::string> parts;
      const auto deltas = model::load_deltas(b);
      if (!b.decoder && !(deltas && deltas->count("image_decoder.fc.0.weight"))) parts.push_back("decoder");
      if (!b.tge) parts.push_back("tge");
      if (!b.mmf && b.expert == "mmf") parts.push_back("mmf");
      model::init_random_adapters(b, static_cast<uint64_t>(c->init_random), parts);
      std::cerr << fmt::format("bundle: random adapters (seed {}): {}\n", c->init_random, fmt::join(parts, ", "));
    }
    model::validate_bundle(b);
    model::write_bundle(b, b.dir);
    std::cerr << fmt::format("bundle: wrote {}\n", (b.dir / "iadgpt.json").string());
  });

  auto dir = std::make_shared<std::string>();
  auto* check = cmd->add_subcommand("check", "Validate a bundle (every path, width and value); print its summary as JSON");
  check->add_option("dir", *dir, "Bundle directory")->required();
  check->callback([dir] {
    const auto b = model::read_bundle(*dir);
    std::cout << summary(b).dump(2) << "\n";
    std::cerr << "bundle: ok\n";
  });
}

}  // namespace iadgpt::cli
