#include "train/trainer.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <sstream>

#include "io/atomic_file.h"
#include "io/error.h"
#include "llm/config.h"
#include "llm/tokenizer.h"
#include "model/pipeline.h"
#include "train/bundle_writer.h"
#include "train/checkpoints.h"
#include "train/evaluation.h"
#include "train/optimiser.h"
#include "train/pool.h"
#include "train/seeding.h"
#include "train/step.h"
#include "train/trainable.h"

namespace iadgpt::train {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// Truncates the JSONL log to entries at or before `step` (a resumed run rewrites what follows).
void truncate_log(const fs::path& log, int64_t step) {
  if (!fs::exists(log)) return;
  std::ifstream in(log);
  std::ostringstream kept;
  std::string line;
  while (std::getline(in, line)) {
    try {
      auto j = nlohmann::json::parse(line);
      if (j.value("step", int64_t{0}) <= step) kept << line << "\n";
    } catch (const std::exception&) {
      // a torn last line from a kill: dropped
    }
  }
  io::write_file_atomic(log, kept.str());
}

// A checkpoint's counter (written by save_checkpoint); InputError naming the file when it is not one.
int64_t metadata_int(LoadedCheckpoint& ck, const std::string& key) {
  const auto& text = ck.metadata[key];
  try {
    size_t used = 0;
    const int64_t v = std::stoll(text, &used);
    if (used == text.size() && v >= 0) return v;
  } catch (const std::exception&) {
  }
  throw InputError(fmt::format("{}: metadata '{}' is not a step count ('{}')", ck.path.string(), key, text));
}

// Where a run stands: the stage it is in, the step within it, the global step.
struct Progress {
  int64_t stage_index = 0, stage_step = 0, global = 0;
};

// The step's statistics, summed over the global batch with the gradients (one all-reduce).
enum Stat { kCe, kFocal, kDice, kCorrect, kLabelled, kInstruction, kStop, kStats };

// One slot of a step's global batch: the example and its draws (seed, stage, step, slot).
struct Slot {
  int64_t example = 0;
  bool instruction = false, labelled = false, substitute = false;
  uint64_t dropout_seed = 0;
};

// The run after its setup: the schedule of the stages, each step's gradients over the global
// batch, evaluation, checkpoints and the JSONL log.
class Loop {
 public:
  Loop(const TrainConfig& cfg, Distributed& dist, const TrainHooks& hooks, const llm::Tokenizer& tok, Pools& pools,
       Trainable& trained, const model::DecisionTokens& decision, const torch::Device& device)
      : cfg_(cfg), dist_(dist), hooks_(hooks), pools_(pools), named_(trained.named()),
        store_(cfg.out / "checkpoints", cfg.keep), config_text_(cfg.to_json().dump()),
        runner_{cfg, pools.train, pools.cats, tok, trained, cfg.image_size, decision, device},
        held_out_{cfg, pools.eval, pools.cats, tok, trained, cfg.image_size, decision, device},
        validation_{cfg, pools.val, pools.cats, tok, trained, cfg.image_size, decision, device},
        device_(device), batched_(uses_batched_gradients(cfg, device)) {
    for (const auto& s : cfg.stages) total_steps_ += s.steps;
  }

  std::optional<LoadedCheckpoint> resume(TrainResult& result);
  void open_log(bool resumed);
  bool run_stages();  // false when stopped
  int64_t global() const { return at_.global; }
  int64_t total_steps() const { return total_steps_; }
  EvalResult evaluate_and_log();

 private:
  void say(const std::string& m) const {
    if (hooks_.on_message && dist_.is_main()) hooks_.on_message(m);
  }
  Optimiser stage_optimiser(const StageConfig& st);
  Slot slot(int64_t g_index, const std::function<int64_t(int64_t)>& example_at) const;
  torch::Tensor weighted_loss(const StageConfig& st, const std::vector<Slot>& slots, std::vector<float>& stats);
  torch::Tensor take_gradients(const Optimiser& opt, const std::vector<float>& stats);
  torch::Tensor example_gradients(const StageConfig& st, int64_t g_index, const std::function<int64_t(int64_t)>& example_at,
                                  const Optimiser& opt);
  torch::Tensor batched_gradients(const StageConfig& st, int64_t lo, int64_t hi,
                                  const std::function<int64_t(int64_t)>& example_at, const Optimiser& opt);
  bool step(const StageConfig& st, Optimiser& opt, const std::function<int64_t(int64_t)>& example_at);
  void log_step(const StageConfig& st, const torch::Tensor& stats, double norm, double lr, double seconds);
  void save_checkpoint(const Optimiser* opt);

  const TrainConfig& cfg_;
  Distributed& dist_;
  const TrainHooks& hooks_;
  Pools& pools_;
  std::vector<std::pair<std::string, torch::Tensor>> named_;
  CheckpointStore store_;
  std::string config_text_;
  Runner runner_, held_out_, validation_;
  std::optional<LoadedCheckpoint> resume_;
  Progress at_;
  std::ofstream log_;
  int64_t total_steps_ = 0;
  torch::Device device_;  // the trained parts'; the pools stay in host memory
  bool batched_ = false;  // config `gradients`
};

std::optional<LoadedCheckpoint> Loop::resume(TrainResult& result) {
  if (!cfg_.resume) return std::nullopt;
  auto ck = store_.latest();
  if (!ck) return std::nullopt;
  if (ck->metadata["config"] != config_text_)
    throw InputError(fmt::format("{}: written by a run with another configuration (delete it or set \"resume\": false)",
                                 ck->path.string()));
  torch::NoGradGuard g;
  for (auto& [name, t] : named_) {
    auto it = ck->tensors.find("param." + name);
    if (it == ck->tensors.end()) throw InputError(fmt::format("{}: no tensor 'param.{}'", ck->path.string(), name));
    t.copy_(it->second);
  }
  at_.stage_index = metadata_int(*ck, "stage_index");
  at_.stage_step = metadata_int(*ck, "stage_step");
  at_.global = metadata_int(*ck, "global_step");
  result.resumed_from = at_.global;
  say(fmt::format("resumed from {} (step {}, stage {} step {})", ck->path.string(), at_.global,
                  at_.stage_index < static_cast<int64_t>(cfg_.stages.size()) ? cfg_.stages[at_.stage_index].stage : 0,
                  at_.stage_step));
  resume_ = ck;
  return ck;
}

void Loop::open_log(bool resumed) {
  const fs::path log_path = cfg_.out / "train.jsonl";
  if (dist_.is_main()) {
    fs::create_directories(cfg_.out);
    if (resumed) truncate_log(log_path, at_.global);
    else if (fs::exists(log_path)) fs::remove(log_path);
    log_.open(log_path, std::ios::app);
  }
}

EvalResult Loop::evaluate_and_log() {
  auto r = evaluate(held_out_, validation_, at_.global);
  log_ << r.to_json().dump() << "\n";
  log_.flush();
  if (hooks_.on_eval) hooks_.on_eval(r);
  return r;
}

void Loop::save_checkpoint(const Optimiser* opt) {
  if (!dist_.is_main()) return;
  io::TensorMap tensors;
  for (auto& [name, t] : named_) tensors.emplace("param." + name, t.detach().clone());
  if (opt) opt->save(tensors);
  for (auto& [key, t] : tensors) t = t.to(torch::kCPU);  // written from host memory
  store_.save(at_.global, tensors,
              {{"config", config_text_}, {"stage_index", std::to_string(at_.stage_index)},
               {"stage_step", std::to_string(at_.stage_step)}, {"global_step", std::to_string(at_.global)},
               {"adam_t", std::to_string(opt ? opt->steps() : 0)}},
              hooks_.checkpoint_write_hook);
}

// Freezes what the stage does not train (no gradient buffers, no autograd graph for them); the
// rest goes to a fresh AdamW, or to the checkpoint's moments when resuming inside the stage.
Optimiser Loop::stage_optimiser(const StageConfig& st) {
  std::vector<TrainedTensor> trained;
  for (auto& [name, t] : named_) {
    const bool on = Trainable::trains(name, st.stage) && (st.llm || !Trainable::is_llm(name));
    t.requires_grad_(on);
    if (on) trained.push_back({name, t, Trainable::is_llm(name)});
  }
  Optimiser opt(std::move(trained), cfg_);
  if (at_.stage_step > 0 && resume_)
    opt.load(resume_->tensors, metadata_int(*resume_, "adam_t"), resume_->path.string());
  return opt;
}

// Slot g_index of the step's global batch: its example and its draws. With probability
// `instructions.share` the slot takes an instruction example instead.
Slot Loop::slot(int64_t g_index, const std::function<int64_t(int64_t)>& example_at) const {
  const uint64_t ex = mix({cfg_.seed, 31, static_cast<uint64_t>(at_.stage_index), static_cast<uint64_t>(at_.stage_step),
                           static_cast<uint64_t>(g_index)});
  const auto& instructions = pools_.instruction_items;
  Slot s;
  s.instruction = !instructions.empty() && unit(ex ^ 3) < cfg_.instructions->share;
  s.example = s.instruction ? instructions[mix(ex ^ 4) % instructions.size()]
                            : example_at(at_.stage_step * cfg_.batch_size + g_index);
  s.labelled = pools_.train.label[s.example] >= 0;
  s.substitute = s.labelled && unit(ex ^ 1) < cfg_.few_shot_probability;
  s.dropout_seed = mix(ex ^ 2);
  return s;
}

// The forward of `slots` as one batch, and its loss weighted by the GLOBAL batch size: summed over
// every slot of every rank, the gradients are those of the global batch's mean loss. Adds the
// slots' statistics to `stats`.
torch::Tensor Loop::weighted_loss(const StageConfig& st, const std::vector<Slot>& slots, std::vector<float>& stats) {
  std::vector<int64_t> idx;
  std::vector<bool> substitute, map_rows;
  std::vector<uint64_t> seeds;
  int64_t labelled = 0;
  for (const auto& s : slots) {
    idx.push_back(s.example);
    substitute.push_back(s.substitute);
    seeds.push_back(s.dropout_seed);
    map_rows.push_back(st.stage == 2 && s.labelled);
    labelled += s.labelled ? 1 : 0;
  }
  auto o = runner_.run(idx, substitute, seeds, map_rows, false);
  const double B = static_cast<double>(cfg_.batch_size);
  auto loss = o.ce.sum().to(torch::kFloat32) / B;
  if (o.decision_ce.defined() && labelled > 0) {
    // Instruction rows have no Yes/No token: their decision CE is masked out.
    auto d = o.decision_ce;
    if (labelled < static_cast<int64_t>(slots.size())) {
      std::vector<float> on;
      for (const auto& s : slots) on.push_back(s.labelled ? 1.0f : 0.0f);
      d = d * torch::tensor(on).to(d.device());
    }
    loss = loss + d.sum().to(torch::kFloat32) * (cfg_.decision_weight / B);
  }
  // map_total is the mean over its rows; × rows (exactly 1 for one example) makes it their sum.
  if (o.map_total.defined()) loss = loss + o.map_total.to(torch::kFloat32) * static_cast<double>(o.map_rows) / B;
  stats[kCe] += static_cast<float>(o.ce.sum().item<double>());
  stats[kFocal] += static_cast<float>(o.focal * static_cast<double>(o.map_rows));
  stats[kDice] += static_cast<float>(o.dice * static_cast<double>(o.map_rows));
  for (size_t j = 0; j < slots.size(); ++j) {
    const auto& s = slots[j];
    stats[kCorrect] += s.labelled && o.predicted[j] == pools_.train.label[s.example] ? 1.0f : 0.0f;
    stats[kLabelled] += s.labelled ? 1.0f : 0.0f;
    stats[kInstruction] += s.instruction ? 1.0f : 0.0f;
  }
  return loss;
}

// The accumulated gradients (flattened, in the optimiser's order; zeros where a parameter got
// none) followed by the statistics; the gradients are reset.
torch::Tensor Loop::take_gradients(const Optimiser& opt, const std::vector<float>& stats) {
  std::vector<torch::Tensor> parts;
  for (const auto& p : opt.params()) {
    parts.push_back(p.grad().defined() ? p.grad().reshape({-1}).clone() : torch::zeros({p.numel()}, p.options()));
    p.mutable_grad().reset();
  }
  parts.push_back(torch::tensor(stats, torch::kFloat32).to(device_));
  return torch::cat(parts);
}

// One slot's gradients and statistics (config `gradients` per_example): forward values never
// depend on which examples share a batch.
torch::Tensor Loop::example_gradients(const StageConfig& st, int64_t g_index,
                                      const std::function<int64_t(int64_t)>& example_at, const Optimiser& opt) {
  std::vector<float> stats(kStats, 0.0f);
  {
    Autocast autocast(cfg_.bf16_autocast, device_);
    weighted_loss(st, {slot(g_index, example_at)}, stats).backward();
  }
  return take_gradients(opt, stats);
}

// The gradients of global slots [lo, hi) (config `gradients` batched): one forward + backward per
// micro-batch of (hi - lo) / grad_accum slots, accumulated in the parameters' gradients.
torch::Tensor Loop::batched_gradients(const StageConfig& st, int64_t lo, int64_t hi,
                                      const std::function<int64_t(int64_t)>& example_at, const Optimiser& opt) {
  std::vector<float> stats(kStats, 0.0f);
  const int64_t micro = (hi - lo) / cfg_.grad_accum;
  for (int64_t start = lo; start < hi; start += micro) {
    std::vector<Slot> slots;
    for (int64_t g = start; g < start + micro; ++g) slots.push_back(slot(g, example_at));
    Autocast autocast(cfg_.bf16_autocast, device_);
    weighted_loss(st, slots, stats).backward();
  }
  return take_gradients(opt, stats);
}

void Loop::log_step(const StageConfig& st, const torch::Tensor& stats, double norm, double lr, double seconds) {
  StepLog sl;
  sl.step = at_.global;
  sl.total_steps = total_steps_;
  sl.stage = st.stage;
  sl.stage_step = at_.stage_step;
  const double B = static_cast<double>(cfg_.batch_size);
  sl.ce = stats[kCe].item<double>() / B;
  sl.focal = stats[kFocal].item<double>() / B;
  sl.dice = stats[kDice].item<double>() / B;
  sl.accuracy = stats[kCorrect].item<double>() / std::max(1.0, stats[kLabelled].item<double>());
  sl.instructions = static_cast<int64_t>(stats[kInstruction].item<double>());
  sl.loss = sl.ce + (st.stage == 2 ? sl.focal + sl.dice : 0.0);
  sl.lr = lr;
  sl.grad_norm = norm;
  sl.seconds = seconds;
  if (!dist_.is_main()) return;
  log_ << nlohmann::json{{"step", sl.step}, {"stage", sl.stage}, {"stage_step", sl.stage_step}, {"loss", sl.loss},
                         {"ce", sl.ce}, {"focal", sl.focal}, {"dice", sl.dice}, {"accuracy", sl.accuracy},
                         {"instructions", sl.instructions},
                         {"lr", sl.lr}, {"grad_norm", sl.grad_norm}, {"seconds", sl.seconds}}
              .dump()
       << "\n";
  log_.flush();
  if (hooks_.on_step) hooks_.on_step(sl);
}

// One optimiser step over the global batch; true when the run is asked to stop.
bool Loop::step(const StageConfig& st, Optimiser& opt, const std::function<int64_t(int64_t)>& example_at) {
  const auto ts = Clock::now();
  // The examples' gradients summed as a balanced binary tree over the global batch. A rank's share
  // is a subtree, so two ranks (Gloo adds the two halves; a + b is commutative) reproduce the
  // single-process sum bit for bit — AdamW would otherwise amplify summation-order noise in
  // near-zero gradients far beyond 1e-5.
  std::function<torch::Tensor(int64_t, int64_t)> tree = [&](int64_t lo, int64_t hi) -> torch::Tensor {
    if (hi - lo > 1) {
      const int64_t mid = lo + (hi - lo) / 2;
      return tree(lo, mid) + tree(mid, hi);
    }
    return example_gradients(st, lo, example_at, opt);
  };
  const int64_t local_batch = cfg_.batch_size / dist_.world_size();
  const int64_t lo = dist_.rank() * local_batch, hi = lo + local_batch;
  auto flat = batched_ ? batched_gradients(st, lo, hi, example_at, opt) : tree(lo, hi);
  // One all-reduce for every gradient plus the step's statistics and the stop flag.
  const bool want_stop = (hooks_.stop && hooks_.stop->load()) || (cfg_.stop_after > 0 && at_.global + 1 >= cfg_.stop_after);
  if (want_stop) flat[flat.size(0) - kStats + kStop] += 1.0;
  dist_.all_reduce_sum(flat);
  if (hooks_.on_gradients) hooks_.on_gradients(at_.global + 1, flat.narrow(0, 0, flat.size(0) - kStats));
  int64_t off = 0;
  for (const auto& p : opt.params()) {
    p.mutable_grad() = flat.narrow(0, off, p.numel()).view_as(p).clone();
    off += p.numel();
  }
  auto stats = flat.narrow(0, off, kStats).to(torch::kCPU);  // the step's few scalars, to the host once
  const double norm = opt.clip(cfg_.clip);
  const double sched = learning_rate(at_.stage_step, st.steps, 1.0, cfg_.warmup);
  opt.step(st.lr * sched, cfg_.llm_lr * sched);
  for (const auto& p : opt.params()) p.mutable_grad().reset();
  ++at_.stage_step;
  ++at_.global;
  log_step(st, stats, norm, st.lr * sched, std::chrono::duration<double>(Clock::now() - ts).count());
  return stats[kStop].item<double>() > 0;
}

bool Loop::run_stages() {
  bool stop = false;
  for (; at_.stage_index < static_cast<int64_t>(cfg_.stages.size()) && !stop; ++at_.stage_index, at_.stage_step = 0) {
    const auto& st = cfg_.stages[at_.stage_index];
    auto opt = stage_optimiser(st);
    runner_.cache_frozen(st.stage);
    // Data order: one permutation per epoch of the stage, from (seed, stage index, epoch). An
    // epoch visits every (original, synthetic) pair, so each original comes once per synthetic
    // variant: "Yes" and "No" are equally frequent whatever `per_image` (with more "Yes" the LLM
    // first learns to answer "Yes" to everything, and the decision never leaves that prior).
    const auto epoch_items = balanced_items(pools_.train);
    const auto epoch_size = static_cast<int64_t>(epoch_items.size());
    std::map<int64_t, std::vector<int64_t>> perms;
    const int64_t stage_index = at_.stage_index;
    auto example_at = [&](int64_t k) {
      const int64_t epoch = k / epoch_size;
      auto& perm = perms[epoch];
      if (perm.empty()) {
        perm = epoch_items;
        std::mt19937_64 rng(mix({cfg_.seed, 21, static_cast<uint64_t>(stage_index), static_cast<uint64_t>(epoch)}));
        for (int64_t i = epoch_size - 1; i > 0; --i)
          std::swap(perm[i], perm[static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1))]);
      }
      return perm[k % epoch_size];
    };
    while (at_.stage_step < st.steps) {
      stop = step(st, opt, example_at);
      if (cfg_.eval_every > 0 && at_.global % cfg_.eval_every == 0 && dist_.is_main()) evaluate_and_log();
      if (at_.stage_step == st.steps) {
        // The next stage starts with fresh AdamW moments: the checkpoint points at it.
        ++at_.stage_index;
        at_.stage_step = 0;
        save_checkpoint(nullptr);
        --at_.stage_index;
        break;  // the outer loop moves to the next stage (or ends on `stop`)
      }
      if (stop || (cfg_.checkpoint_every > 0 && at_.global % cfg_.checkpoint_every == 0)) save_checkpoint(&opt);
      if (stop) break;
    }
  }
  for (auto& [name, t] : named_) t.requires_grad_(false);
  return !stop;
}

}  // namespace

TrainResult train(const TrainConfig& cfg, Distributed& dist, const TrainHooks& hooks) {
  const auto t0 = Clock::now();
  auto say = [&](const std::string& m) {
    if (hooks.on_message && dist.is_main()) hooks.on_message(m);
  };
  if (cfg.batch_size % (dist.world_size() * cfg.grad_accum) != 0)
    throw InputError(fmt::format("{}: 'batch_size' {} must be a multiple of world size × grad_accum = {}",
                                 cfg.source.string(), cfg.batch_size, dist.world_size() * cfg.grad_accum));

  const auto device = training_device(cfg.device);
  auto frozen = load_frozen(cfg);
  auto tok = llm::Tokenizer::from_path(cfg.tokenizer.value_or(cfg.llm));
  const auto decision = model::decision_tokens(tok);  // the token that says Yes or No, after its forced prefix
  const int64_t max_positions = llm::LlamaConfig::from_file(cfg.llm / "config.json").max_position_embeddings;
  auto pools = build_pools(cfg, frozen, tok, max_positions);
  say(fmt::format("pool: {} training examples ({} instruction), {} held-out, {} validation parts, {} categories",
                  pools.train.size(), pools.instruction_items.size(), pools.eval.size(), pools.val.size(),
                  pools.train_images.size()));

  // Trainable parts (fixed seeds; a resume overwrites them from the checkpoint).
  auto trained = make_trainable(cfg, pools.train.embedding.size(1), frozen.encoder.width(), device);
  Loop loop(cfg, dist, hooks, tok, pools, trained, decision, device);
  TrainResult result;
  const bool resumed = loop.resume(result).has_value();
  if (!resumed && cfg.map_warmup.steps > 0) {  // a checkpoint already holds the warmed decoder
    const auto tw = Clock::now();
    auto warmed = warm_up_decoder(cfg, frozen, pools, mix({cfg.seed, 16}));
    torch::NoGradGuard g;
    auto from = warmed.decoder->named_parameters();
    for (auto& p : trained.heads.decoder->named_parameters()) p.value().copy_(from[p.key()]);
    say(fmt::format("map warm-up: {} steps, loss {:.4f} -> {:.4f} ({:.1f} s)", cfg.map_warmup.steps,
                    warmed.log.front().loss, warmed.log.back().loss,
                    std::chrono::duration<double>(Clock::now() - tw).count()));
  }
  loop.open_log(resumed);

  const bool finished = loop.run_stages();
  result.steps_done = loop.global();
  result.interrupted = !finished && result.steps_done < loop.total_steps();
  if (!result.interrupted && dist.is_main()) {
    result.final_eval = loop.evaluate_and_log();
    move_trainable(trained, torch::kCPU);  // the bundle is written from host memory
    write_trained_bundle(cfg, trained, frozen.encoder.taps);
  }
  dist.barrier();
  result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return result;
}

}  // namespace iadgpt::train
