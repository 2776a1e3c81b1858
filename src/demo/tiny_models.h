// Tiny models made from scratch for the first-contact demo (`iadgpt demo`): nothing downloaded.
//
//   demo::write_tiny_clip("out/clip", demo::clip_corpus(classes), {});     // HF CLIPModel dir + BPE vocab
//   demo::train_llm_tokenizer("out/llm", demo::answer_corpus(classes), 512); // tokenizer.model
//   demo::write_tiny_llama("out/llm", {});                                  // config.json + weights
//
// The towers are RANDOM (N(0, 0.02), LayerNorms 1/0): a random ViT still separates local patch
// statistics, which is what the trained decoder and the few-shot memory bank read; the answers'
// quality comes from what is trained on top, not from the towers. Files are written in the upstream
// layouts (Hugging Face CLIPModel / LlamaForCausalLM directories), so every loader of the program
// reads them exactly as it reads real weights.
// Thread-safety: pure functions over their output folders.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "llm/config.h"

namespace iadgpt::demo {

struct TinyClipOptions {
  int64_t image_size = 224, patch_size = 14;
  int64_t vision_width = 96, vision_layers = 4, vision_heads = 2;
  int64_t text_width = 64, text_layers = 2, text_heads = 2;
  int64_t embed_dim = 64;  // D, the joint space
  uint64_t seed = 0;
};

// Prompt sentences (AnomalyGPT ensemble) of these classes, plus "object": the BPE training corpus.
std::vector<std::string> clip_corpus(const std::vector<std::string>& classes);

// CLIP byte-level BPE merges learned on `corpus` (most frequent pair first, ties by text), padded
// with unused letter pairs to `min_merges` because the CLIP tokenizer refuses tiny vocabularies
// (< 1000 merges is taken for a broken file). Lines "a b" without the header.
std::vector<std::string> learn_bpe_merges(const std::vector<std::string>& corpus, std::size_t min_merges = 1000);

// Writes <dir>/config.json (HF CLIPConfig), <dir>/model.safetensors (random weights, HF names)
// and <dir>/bpe_demo_vocab.txt (CLIP vocabulary format: header line + merges). Returns the
// vocabulary path.
std::filesystem::path write_tiny_clip(const std::filesystem::path& dir, const std::vector<std::string>& corpus,
                                      const TinyClipOptions& options);

// What the LLM must say and read (METHOD §1.9–1.10): prompt pieces, class questions, every answer
// the position words can make, defect names. The SentencePiece training corpus.
std::vector<std::string> answer_corpus(const std::vector<std::string>& classes,
                                       const std::vector<std::string>& defects);

// Trains <dir>/tokenizer.model (SentencePiece BPE, LLaMA ids: unk 0, bos 1, eos 2, byte
// fallback) on `corpus`. Returns the vocabulary size actually reached.
int64_t train_llm_tokenizer(const std::filesystem::path& dir, const std::vector<std::string>& corpus,
                            int64_t vocab_size);

struct TinyLlamaOptions {
  int64_t vocab_size = 512, hidden = 64, intermediate = 176, layers = 2, heads = 4;
  int64_t max_positions = 512;
  uint64_t seed = 0;
};
// Writes <dir>/config.json (LlamaForCausalLM) and <dir>/model.safetensors with random weights.
llm::LlamaConfig write_tiny_llama(const std::filesystem::path& dir, const TinyLlamaOptions& options);

}  // namespace iadgpt::demo
