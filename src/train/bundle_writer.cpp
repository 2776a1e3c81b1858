#include "train/bundle_writer.h"

#include <filesystem>

#include "anomaly/maps.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "llm/train_forward.h"
#include "model/adapters.h"
#include "model/bundle.h"

namespace iadgpt::train {
namespace fs = std::filesystem;

namespace {

void save_owned(const fs::path& path, const io::TensorMap& tensors) {
  io::write_file_atomic(path, io::serialize_safetensors(tensors, {{"format", "pt"}}));
}

// llm_tuning "full": the LLM's weights as an HF directory beside the bundle.
fs::path write_full_llm(const TrainConfig& cfg, Trainable& trained, const fs::path& dir) {
  fs::create_directories(dir);
  fs::copy_file(cfg.llm / "config.json", dir / "config.json", fs::copy_options::overwrite_existing);
  if (fs::exists(cfg.llm / "tokenizer.model"))
    fs::copy_file(cfg.llm / "tokenizer.model", dir / "tokenizer.model", fs::copy_options::overwrite_existing);
  auto w = llm::named_weights(trained.llm);
  io::TensorMap t;
  for (size_t i = 0; i < w.names.size(); ++i) t.emplace(w.names[i], w.tensors[i].detach().contiguous());
  save_owned(dir / "model.safetensors", t);
  return dir;
}

}  // namespace

void write_trained_bundle(const TrainConfig& cfg, Trainable& trained, const std::vector<int64_t>& taps) {
  model::Bundle b;
  b.dir = fs::absolute(cfg.out);
  b.vision = fs::absolute(cfg.vision);
  if (cfg.text) b.text = fs::absolute(*cfg.text);
  if (cfg.vocab) b.vocab = fs::absolute(*cfg.vocab);
  b.vision_config = cfg.vision_config;
  b.llm = fs::absolute(cfg.llm);
  if (cfg.tokenizer) b.tokenizer = fs::absolute(*cfg.tokenizer);
  save_owned(b.dir / "decoder.safetensors", anomaly::decoder_tensors(trained.heads.decoder));
  save_owned(b.dir / "tge.safetensors", model::parameter_tensors(*trained.heads.tge));
  save_owned(b.dir / "mmf.safetensors", model::parameter_tensors(*trained.heads.mmf));
  b.decoder = b.dir / "decoder.safetensors";
  b.tge = b.dir / "tge.safetensors";
  b.mmf = b.dir / "mmf.safetensors";
  if (cfg.llm_tuning == "full") {
    b.llm = write_full_llm(cfg, trained, b.dir / "llm");  // the released LoRA is merged in these weights
  } else {
    // The released weights stay named: inference merges their LoRA under ours (decoder and
    // llama_proj come from our files, which win over a delta's).
    b.delta = cfg.delta ? std::optional(fs::absolute(*cfg.delta)) : std::nullopt;
    b.anomalygpt = cfg.anomalygpt ? std::optional(fs::absolute(*cfg.anomalygpt)) : std::nullopt;
    b.lora_alpha = cfg.delta_lora_alpha;
    if (trained.lora) {
      llm::save_peft_adapter(trained.llm, cfg.lora, b.dir / "lora");
      b.lora = b.dir / "lora";
    }
  }
  b.taps = taps;
  b.image_size = cfg.image_size;
  // Trained only with the references' few-shot map in the MMF input: inference needs them too.
  if (cfg.few_shot_probability >= 1.0) b.mode = "few-shot";
  b.map = cfg.map;     // the heads read at inference what they read here
  b.rotations = true;  // and the few-shot bank is built as here (train/pool.cpp)
  model::write_bundle(b, b.dir);
}

}  // namespace iadgpt::train
