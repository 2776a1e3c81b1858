#include "train/bench.h"

#include <fmt/format.h>

#include <chrono>

#include "anomaly/prompts.h"
#include "io/error.h"
#include "llm/config.h"
#include "llm/model.h"
#include "llm/train_forward.h"
#include "llm/weights.h"
#include "model/heads.h"
#include "nn/device.h"
#include "train/losses.h"
#include "train/optimiser.h"
#include "train/step.h"
#include "train/trainable.h"
#include "vision/vit.h"

namespace iadgpt::train {
namespace {

using Clock = std::chrono::steady_clock;

void check(const TrainBenchOptions& o) {
  if (o.stage < 1 || o.stage > 3) throw InputError(fmt::format("--stage must be 1, 2 or 3 (got {})", o.stage));
  if (o.steps < 1 || o.batch < 1 || o.prompt_tokens < 3 || o.answer_tokens < 1)
    throw InputError(fmt::format("--steps, --batch and --answer-tokens must be ≥ 1 and --prompt-tokens ≥ 3 (got {}, {}, {}, {})",
                                 o.steps, o.batch, o.answer_tokens, o.prompt_tokens));
  if (o.llm_dtype != "bf16" && o.llm_dtype != "f32")
    throw InputError(fmt::format("--llm-dtype must be bf16 or f32 (got '{}')", o.llm_dtype));
  if (o.arch.find('+') == std::string::npos)
    throw InputError(fmt::format("--arch '{}': expected VISION+LLM, e.g. imagebind-huge+llama-7b", o.arch));
}

// The frozen side of one batch at its real shapes (the pool's rows), in host memory.
struct Batch {
  std::vector<torch::Tensor> taps;  // 4 × [b, 1+N, D_v]
  torch::Tensor embedding;          // [b, D]
  torch::Tensor few_shot, masks;    // [b, S, S]
  anomaly::TextFeatures text;
  std::vector<std::vector<int64_t>> prompt, answer;  // per example: 3 prompt pieces joined, the answer
};

Batch synthetic_batch(const TrainBenchOptions& o, const vision::VitConfig& v, const llm::LlamaConfig& l) {
  torch::manual_seed(5);  // the bench's own draws: the same batch every run
  Batch b;
  for (int i = 0; i < 4; ++i) b.taps.push_back(torch::randn({o.batch, v.tokens(), v.width}));
  b.embedding = torch::randn({o.batch, v.embed_dim});
  const int64_t S = v.image_size;
  b.few_shot = torch::rand({o.batch, S, S});
  b.masks = torch::zeros({o.batch, S, S});
  b.masks.narrow(1, S / 4, S / 4).narrow(2, S / 4, S / 4).fill_(1);  // one square defect each
  auto unit = [&](int64_t n) {
    return torch::nn::functional::normalize(torch::randn({n, v.embed_dim}), torch::nn::functional::NormalizeFuncOptions().dim(-1));
  };
  b.text = anomaly::reduce_text_features(unit(14), unit(10));  // AnomalyGPT's ensemble sizes
  auto ids = [&](int64_t n) {
    auto t = torch::randint(3, l.vocab_size, {n}, torch::kInt64);
    return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
  };
  for (int64_t j = 0; j < o.batch; ++j) {
    b.prompt.push_back(ids(o.prompt_tokens));
    b.answer.push_back(ids(o.answer_tokens));
  }
  return b;
}

// The §1.9 layout: prompt piece, image token, piece, 18 expert tokens, rest of the prompt, answer.
torch::Tensor sequence(const llm::LlamaModel& m, const std::vector<int64_t>& prompt, const std::vector<int64_t>& answer,
                       const torch::Tensor& image_token, const torch::Tensor& expert) {
  const auto a = prompt.begin() + static_cast<std::ptrdiff_t>(prompt.size() / 3);
  const auto c = prompt.begin() + static_cast<std::ptrdiff_t>(2 * prompt.size() / 3);
  std::vector<int64_t> tail(c, prompt.end());
  tail.insert(tail.end(), answer.begin(), answer.end());
  std::vector<llm::Segment> segs{llm::Segment::tokens({prompt.begin(), a}), llm::Segment::rows(image_token),
                                 llm::Segment::tokens({a, c}), llm::Segment::rows(expert), llm::Segment::tokens(tail)};
  return llm::embed_segments(m, segs);
}

}  // namespace

TrainBenchResult bench_training(const TrainBenchOptions& o) {
  check(o);
  const auto plus = o.arch.find('+');
  const auto vcfg = vision::vit_preset(o.arch.substr(0, plus));
  const auto lcfg = llm::LlamaConfig::preset(o.arch.substr(plus + 1));
  const auto dtype = o.llm_dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;

  TrainConfig cfg;
  cfg.lora = {.rank = o.lora_rank, .alpha = static_cast<double>(o.lora_rank), .dropout = 0.1};
  cfg.bf16_autocast = o.bf16_autocast;
  cfg.gradient_checkpointing = o.gradient_checkpointing;
  llm::LlamaModel base(lcfg, llm::random_weights(lcfg, dtype, 1), dtype, o.arch);
  auto m = make_trainable(cfg, vcfg.embed_dim, vcfg.width, std::move(base), o.device);

  TrainBenchResult r;
  std::vector<TrainedTensor> trained;
  for (auto& [name, t] : m.named()) {
    const bool on = Trainable::trains(name, o.stage);
    t.requires_grad_(on);
    if (on) {
      trained.push_back({name, t, Trainable::is_llm(name)});
      r.trained_parameters += t.numel();
    }
  }
  Optimiser opt(std::move(trained), cfg);
  const auto batch = synthetic_batch(o, vcfg, lcfg);
  auto text = batch.text;
  for (auto* t : {&text.normal_sentences, &text.abnormal_sentences, &text.f_text}) nn::to_device(*t, o.device);
  const int64_t S = vcfg.image_size;
  nn::reset_peak_device_bytes(o.device);
  for (int64_t step = 0; step < o.steps; ++step) {
    const auto t0 = Clock::now();
    std::vector<torch::Tensor> taps;
    for (const auto& t : batch.taps) taps.push_back(t.to(o.device));  // the step's rows, as the trainer copies them
    torch::Tensor loss;
    {
      Autocast autocast(o.bf16_autocast, o.device);
      auto h = model::run_heads(m.heads, taps, batch.embedding.to(o.device), batch.few_shot.to(o.device), text, S);
      std::vector<torch::Tensor> xs;
      std::vector<uint64_t> seeds;
      for (int64_t j = 0; j < o.batch; ++j) {
        xs.push_back(sequence(m.llm, batch.prompt[j], batch.answer[j], h.image_token[j].unsqueeze(0), h.expert_tokens[j]));
        seeds.push_back(static_cast<uint64_t>(step * o.batch + j));
      }
      auto x = torch::stack(xs);
      const int64_t T = x.size(1);
      r.tokens_per_example = T;
      auto labels = torch::full({o.batch, T}, llm::kIgnoreIndex, torch::kInt64);
      for (int64_t j = 0; j < o.batch; ++j)
        labels[j].narrow(0, T - o.answer_tokens, o.answer_tokens).copy_(torch::tensor(batch.answer[j]));
      llm::TrainForwardOptions fo{.lora_dropout = cfg.lora.dropout, .dropout_seeds = seeds,
                                  .checkpoint_layers = o.gradient_checkpointing};
      auto logits = llm::forward_train(m.llm, x, {}, fo);
      loss = llm::answer_cross_entropy(logits, labels.to(o.device)).mean().to(torch::kFloat32);
      if (o.stage == 2) loss = loss + map_loss(h.layer_probs, batch.masks.to(o.device)).total.to(torch::kFloat32);
      loss.backward();
    }
    opt.clip(1.0);
    opt.step(1e-3, 1e-4);
    for (const auto& p : opt.params()) p.mutable_grad().reset();
    r.losses.push_back(loss.item<double>());  // the one scalar a step reads back
    nn::synchronize(o.device);
    r.step_seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  r.peak_device_bytes = nn::peak_device_bytes(o.device);
  return r;
}

}  // namespace iadgpt::train
