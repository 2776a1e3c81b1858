// The LLaMA-family decoder: config + weights + rotary table, a preallocated KV cache, and one
// forward over a block of input embeddings (prefill of any length, or one decode step).
//
//   auto model = iadgpt::llm::load_model("vicuna-7b", {.dtype = torch::kBFloat16});
//   auto cache = iadgpt::llm::KvCache(model, 2048);
//   auto logits = iadgpt::llm::forward(model, cache, model.embed({1, 15043}), Logits::Last);
//
// A prompt is a list of Segments: token ids, or a float matrix of embeddings (rows = hidden_size)
// placed at that position — how the image embedding and the 18 expert tokens enter (METHOD §1.9).
// Thread-safety: a model is read-only after loading and may be shared; a KvCache is per sequence.
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "llm/config.h"
#include "llm/weights.h"

namespace iadgpt::llm {

struct LlamaModel {
  LlamaConfig config;
  LlamaWeights weights;
  torch::Dtype dtype = torch::kFloat32;  // of the matrices; activations between blocks are fp32
  torch::Tensor rope_cos, rope_sin;      // [max_positions, head_dim/2] fp32
  std::filesystem::path source;

  LlamaModel() = default;
  LlamaModel(LlamaConfig config, LlamaWeights weights, torch::Dtype dtype, std::filesystem::path source = {});

  // Token embeddings as fp32 rows [ids.size(), D]; ids are range-checked.
  torch::Tensor embed(std::span<const int64_t> ids) const;
  int64_t max_positions() const { return rope_cos.size(0); }
  torch::Device device() const { return weights.embed.device(); }
};

// Moves the weights (LoRA pairs included) and RoPE tables to `device`, once after loading; the
// KvCache is made where the model is. Quantized weights run on the CPU only (InputError).
void move_model(LlamaModel& model, const torch::Device& device);

// Reads `dir/config.json` and the weights beside it (model.safetensors, sharded safetensors with an
// index, or pytorch_model*.bin), validated against the config. A stored quantized checkpoint
// (config.json `iadgpt_quant`, README "Stored quantized checkpoints") is read as stored: needs
// dtype bf16; options.quant none or the stored format.
LlamaModel load_model(const std::filesystem::path& dir, const LoadOptions& options = {});

// The config.json field naming a stored quantized checkpoint's format (also in the safetensors
// `__metadata__`, which must agree).
inline constexpr const char* kQuantKey = "iadgpt_quant";

// The format config.json's `iadgpt_quant` names; none when absent. Anything but q8/q4 → InputError
// naming the file and the field.
nn::QuantFormat stored_quant_format(const std::filesystem::path& config_file);

// Quantizes a loaded model in place (quantize_weights from the current values, then
// finish_quantized): the model then runs as if loaded with {bf16, format}. LoRA must be merged first.
void quantize_model(LlamaModel& model, nn::QuantFormat format);

// Keys and values for every layer, allocated once for `capacity` positions (no per-token allocation).
struct KvCache {
  torch::Tensor k, v;  // [n_layers, n_kv_heads, capacity, head_dim], in the model's dtype
  int64_t pos = 0;     // positions filled
  // Buffers of the bf16 single-token decode step (decode.cpp), allocated on its first use and
  // reused for every token. Copies of a KvCache share them (and k/v): one sequence, one thread.
  torch::Tensor decode_f32, decode_bf16, decode_i8;
  // Quantized weights (quant.h): nn::gemm_quant's scratch (packed activations, weight tiles) and its
  // fp32 output in a multi-token forward; grown when too small, otherwise reused.
  torch::Tensor quant_scratch, quant_out;

  KvCache() = default;
  KvCache(const LlamaModel& model, int64_t capacity);
  int64_t capacity() const { return k.defined() ? k.size(2) : 0; }
  void clear() { pos = 0; }
  void truncate(int64_t n) { pos = std::min(pos, n); }
};

// One piece of a prompt: either token ids or embedding rows [n, D].
struct Segment {
  std::vector<int64_t> ids;
  torch::Tensor embeddings;

  static Segment tokens(std::vector<int64_t> ids) { return Segment{std::move(ids), {}}; }
  static Segment rows(torch::Tensor embeddings) { return Segment{{}, std::move(embeddings)}; }
  int64_t length() const { return embeddings.defined() ? embeddings.size(0) : static_cast<int64_t>(ids.size()); }
};

// The input embedding matrix [sum of lengths, D] (fp32) for a segment list; checks widths.
torch::Tensor embed_segments(const LlamaModel& model, std::span<const Segment> segments);

enum class Logits { All, Last };

// Runs x [T, D] at positions cache.pos .. cache.pos+T-1, appends keys/values to the cache and
// returns fp32 logits [T, V] (All) or [1, V] (Last). Throws InputError when the cache is full.
// With bf16 (or quantized) matrices, a single token (T == 1) takes the decode path (decode.h:
// matvec kernels that read each weight once); longer inputs take the GEMM path (quantized
// matrices: quant.h nn::gemm_quant, an int8 GEMM).
torch::Tensor forward(const LlamaModel& model, KvCache& cache, const torch::Tensor& x, Logits which);

// The prefills of several sequences as one forward (serve --batch): inputs[i] [T_i, D] runs at
// positions caches[i]->pos .. of its own cache; fp32 logits [n, V] at each sequence's last row.
// The rows are packed (no padding): every projection is one GEMM over all of them, attention is
// each sequence's own (causal within it, over its own cache). Row i equals forward(model,
// *caches[i], inputs[i], Logits::Last) and the caches hold the same keys and values up to the
// GEMMs' summation order for a different number of rows (tests/llm/prefill_batch_test.cpp states
// the tolerance). Caches must be distinct with room for their rows (InputError naming the sequence).
torch::Tensor forward_batch(const LlamaModel& model, std::span<KvCache* const> caches, std::span<const torch::Tensor> inputs);

// One decode step of several sequences, each one token at its own position in its own cache:
// x [n, D] → fp32 logits [n, V]. bf16 (and quantized) models share each weight read among the
// rows (decode.h decode_step_bf16_batch: bit for bit each row's own step); other models run
// forward() on each row in turn.
torch::Tensor decode_batch(const LlamaModel& model, std::span<KvCache* const> caches, const torch::Tensor& x);

// Convenience: embeds `ids` and runs forward.
torch::Tensor forward_tokens(const LlamaModel& model, KvCache& cache, std::span<const int64_t> ids, Logits which);

}  // namespace iadgpt::llm
