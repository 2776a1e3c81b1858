// The model bundle: one directory with `iadgpt.json` naming every file of an IAD-GPT model
// (vision/text checkpoint, LLM directory, LoRA or PandaGPT/AnomalyGPT delta, trained adapters,
// prompts) and the settings that go with them (image size, taps, mode, dtype, threshold).
//
//   auto b = model::read_bundle("bundles/mvtec");   // every path and width checked, InputError names the field
//   b.threshold = 0.6;  model::write_bundle(b, "bundles/mvtec-t06");
//
// iadgpt.json (paths relative to the bundle directory, or absolute):
//   {"format": "iadgpt-bundle", "version": 1, "vision": "imagebind_huge.pth", "llm": "vicuna-7b",
//    "delta": "anomalygpt/pytorch_model.pt", "decoder": "decoder.safetensors", "tge": "tge.safetensors",
//    "mmf": "mmf.safetensors", "expert": "mmf", "mode": "self-supervised", "dtype": "bf16",
//    "image_size": 224, "taps": [7, 15, 23, 31], "threshold": 0.5, "quant": "none",
//    "decision_bias": {"bottle": 1.5}}
#pragma once
#include <nlohmann/json.hpp>

#include "io/aten.h"
#include "llm/model.h"

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace iadgpt::model {

struct Bundle {                         // <dir>/iadgpt.json; relative paths resolve against dir
  std::filesystem::path dir;
  std::filesystem::path vision;         // vision checkpoint (CLIP family)
  std::optional<std::filesystem::path> text, vocab;  // text tower (default: vision), CLIP BPE vocabulary
  std::optional<nlohmann::json> vision_config;       // --config for towers whose shapes do not tell
  std::filesystem::path llm;            // HF LLaMA dir (config.json + weights + tokenizer.model)
  std::optional<std::filesystem::path> tokenizer;    // tokenizer.model when not inside `llm`
  std::optional<std::filesystem::path> lora;         // PEFT dir
  std::optional<std::filesystem::path> delta;        // PandaGPT/AnomalyGPT delta (.pt): llama_proj, LoRA, image_decoder, prompt_learner
  std::optional<std::filesystem::path> anomalygpt;   // AnomalyGPT's own delta, loaded over `delta` (its keys win), as AnomalyGPT does
  double lora_alpha = 32;               // alpha of a delta's LoRA (PandaGPT/AnomalyGPT: 32; not in the file)
  std::optional<std::filesystem::path> decoder, tge, mmf;  // our safetensors (decoder `fc.<l>.*`)
  std::string expert = "mmf";           // "mmf" | "prompt_learner" (AnomalyGPT)
  std::optional<std::filesystem::path> prompts;      // APG json (else built-in library)
  int64_t image_size = 224;
  std::vector<int64_t> taps;            // empty = family default
  std::string mode = "self-supervised"; // | "few-shot"
  // The map drawn and scored with references (METHOD §1.5): "few-shot" M = M_fs, which the MMF
  // then reads alone (model::mask_stack; the trainer's `map`), "blend" (M_text + M_fs)/2 (needs a
  // decoder), "auto" blend when a decoder is present, else M_fs.
  std::string map = "auto";
  // The references' 90/180/270° views join the few-shot bank (METHOD §1.5's option, AnomalyGPT's
  // augmentation). The trainer builds its few-shot maps so and writes true: inference then feeds
  // the heads what they were trained on.
  bool rotations = false;
  std::string dtype = "f32";            // | "bf16"
  // Where the model runs: "cpu", "cuda" or "cuda:N" (nn/device.h); `--device` overrides it, so a
  // bundle written on a GPU machine still runs on a CPU one.
  std::string device = "cpu";
  // Weight-only quantization of the LLM (llm/quant.h): "none" | "q8" | "q4". When `llm` is a stored
  // quantized checkpoint (`iadgpt quantize`), this must name its format, and every LoRA (the
  // delta's, `lora`) is already merged into it: none is merged again and field `lora` is refused.
  // Otherwise the LLM is loaded, its LoRAs merged, and quantized at load. The LLM's unquantized
  // matrices are then bf16 whatever `dtype` says (`dtype` still sets the vision side).
  std::string quant = "none";
  // The vision tower's matrices in int8 (vision/vit.h quantize_weights, at load): "none" | "q8".
  // About 2.8× faster encode on an AVX-512 VNNI CPU, maps within the bounds of vision/README.md;
  // CPU only. Independent of `quant` (the LLM's).
  std::string vision_quant = "none";
  double threshold = 0.5;               // map threshold for regions / decision fallback
  // Per class: log-odds added to "Yes" against "No" at the decision token (a class not listed: 0,
  // the LLM's own decision). Fitted on labelled validation parts of the class
  // (model::fit_decision_bias), never on the parts it will inspect.
  std::map<std::string, double> decision_bias;
};

// Reads and validates <dir>/iadgpt.json: known fields only, every named file exists, values in
// range, and the widths of the files agree (TGE/MMF/prompt learner H = LLM hidden size, decoder
// D_v/D = vision tower, llama_proj D = vision embedding). InputError names the field and path.
Bundle read_bundle(const std::filesystem::path& dir);

// Parses and checks the fields only (no file access): for tests and `bundle create`.
Bundle bundle_from_json(const nlohmann::json& j, const std::filesystem::path& dir);
nlohmann::json bundle_to_json(const Bundle& bundle);  // paths inside `dir` written relative

// Checks the files named by an in-memory bundle (what read_bundle does after parsing).
void validate_bundle(const Bundle& bundle);
// Field `vision_quant` parsed: none or q8; anything else (q4 too) → InputError naming the field.
nn::QuantFormat vision_quant_format(const Bundle& bundle);

// The part of validate_bundle about the LLM's stored format: a stored quantized LLM needs `quant`
// to name its format, and takes no LoRA (InputError naming the field). Cheap: reads config.json.
void validate_llm_quant(const Bundle& bundle);
// The same for the vision tower: one stored quantized (`iadgpt convert --quant q8`) needs
// `vision_quant` to name its format (InputError naming the field). Reads the file's headers.
void validate_vision_quant(const Bundle& bundle);

// The tensors of `delta` then `anomalygpt` (later keys win); nullopt when neither is given.
std::optional<std::map<std::string, at::Tensor>> load_deltas(const Bundle& bundle);

// Where each part of a bundle comes from, every delta read once: the delta tensors merged
// (PandaGPT's `delta`, then AnomalyGPT's `anomalygpt` over it: its keys win, as AnomalyGPT loads
// them) and, for the decoder and the LoRA, the file that holds them (our own file when the bundle
// names one, else AnomalyGPT's delta when it has the part, else PandaGPT's).
struct BundleSources {
  std::optional<std::map<std::string, at::Tensor>> deltas;
  std::string delta_name;                            // the delta's file, for error messages
  std::optional<std::filesystem::path> decoder;      // decoder weights (ours or `image_decoder.*` of a delta)
  // A delta with LoRA keys. Inference merges it first and the bundle's `lora` (a LoRA trained on
  // top of the released weights, `iadgpt train` with `delta`) after it.
  std::optional<std::filesystem::path> lora_delta;
};
BundleSources resolve_sources(const Bundle& bundle);

// Random adapters (for bundles made from fixtures, tests, or a first training run): writes
// decoder.safetensors (`fc.<l>.*`), tge.safetensors (pathways N(0, 0.02²), so the TGE is not the
// identity on llama_proj) and mmf.safetensors (PyTorch default init) into bundle.dir, widths from
// the vision tower, the taps and the LLM, and points the bundle's fields at them. Deterministic
// for a seed (it seeds torch's global generator). `parts` picks which: "decoder", "tge", "mmf".
void init_random_adapters(Bundle& bundle, uint64_t seed,
                          const std::vector<std::string>& parts = {"decoder", "tge", "mmf"});

// The bundle's LLM as inference runs it: loaded in `dtype`, the delta's LoRA then `lora` merged
// (BundleSources::lora_delta), and quantized when `quant` says so (merged first, then quantized
// from the checkpoint's own precision); a stored quantized LLM is read as stored.
llm::LlamaModel load_bundle_llm(const Bundle& bundle, const BundleSources& sources, torch::Dtype dtype);

// `iadgpt quantize` on a bundle: its LLM with every LoRA merged, quantized to `format`, written to
// <out>/llm (llm::save_quantized_checkpoint, with tokenizer.model when the LLM dir has one), and
// <out>/iadgpt.json: the same bundle with `llm` → that directory, `quant` → format, `lora` dropped
// (merged); other files stay where they are (absolute paths). Returns the new bundle, read back.
// A bundle that is already quantized, or format none → InputError.
Bundle quantize_bundle(const Bundle& bundle, nn::QuantFormat format, const std::filesystem::path& out);

// Writes <dir>/iadgpt.json atomically (temp file + rename); creates dir.
void write_bundle(const Bundle& bundle, const std::filesystem::path& dir);

}  // namespace iadgpt::model
