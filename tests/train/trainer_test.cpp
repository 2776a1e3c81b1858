// `iadgpt train` end to end (issue 6 acceptance): exact resume after kill -9, atomic checkpoints,
// SIGTERM saves, two data-parallel processes equal one with the doubled batch, bad configs fail
// at start. Small runs: frozen imagebind_tiny, llama_tiny (LoRA r 4) with the stories260K
// tokenizer (llama_tiny ships none; both have 512 pieces), hazelnut_toy normal images.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>
#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "common/run.h"
#include "common/shared.h"
#include "common/tiny_training.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/bundle.h"
#include "train/checkpoints.h"

using namespace iadgpt;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json small_config(const fs::path& out) {
  auto cfg = test::tiny_training_config(out);
  cfg.update(json{
      {"llm_tuning", "lora"},
      {"lora", {{"rank", 4}, {"alpha", 8}, {"dropout", 0.1}}},
      {"llm_lr", 1e-3},
      {"datasets", {{{"kind", "mvtec"}, {"root", test::data("hazelnut_toy").string()}, {"categories", {"hazelnut"}}}}},
      {"synthesis", "cutpaste"},
      {"per_image", 1},
      {"holdout", 2},
      {"references", 1},
      {"stages", {{{"stage", 1}, {"steps", 8}}, {{"stage", 3}, {"steps", 1}}}},
      {"batch_size", 2},
      {"checkpoint_every", 2},
      {"keep", 2},
  });
  return cfg;
}

fs::path write_config(const fs::path& dir, const json& j, const std::string& name = "train.json") {
  fs::create_directories(dir);
  const auto p = dir / name;
  std::ofstream(p) << j.dump(1);
  return p;
}

std::string bytes_of(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("missing " + p.string());
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

const std::vector<std::string> kOutputs = {"decoder.safetensors", "tge.safetensors", "mmf.safetensors",
                                           "lora/adapter_model.safetensors"};

pid_t spawn(const std::vector<std::string>& args, const fs::path& log) {
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv;
    const auto prog = test::program().string();
    argv.push_back(const_cast<char*>(prog.c_str()));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    FILE* f = std::freopen(log.c_str(), "w", stderr);
    (void)f;
    execv(prog.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

// Waits until `file` exists (or the child ended); true when it appeared.
bool wait_for(const fs::path& file, pid_t child, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (fs::exists(file)) return true;
    int status = 0;
    if (waitpid(child, &status, WNOHANG) == child) return fs::exists(file);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

int64_t log_lines_with_step(const fs::path& log, int64_t step, const std::string& event = "") {
  std::ifstream in(log);
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    auto j = json::parse(line);
    if (j.value("step", int64_t{-1}) == step && j.value("event", std::string()) == event) ++n;
  }
  return n;
}

}  // namespace

TEST(TrainCli, KillNineThenResumeGivesBitwiseTheSameWeights) {
  const auto dir = test::scratch("train-resume");
  // Uninterrupted reference run.
  auto a = test::run_iadgpt({"--threads", "2", "train", "--quiet", "--config", write_config(dir / "a", small_config(dir / "a" / "out")).string()});
  ASSERT_EQ(a.exit_code, 0) << a.err;

  // Same run killed with SIGKILL right after its checkpoint at step 4 appears, then resumed.
  const auto cfg_b = write_config(dir / "b", small_config(dir / "b" / "out"));
  const pid_t pid = spawn({"--threads", "2", "train", "--quiet", "--config", cfg_b.string()}, dir / "b" / "first.log");
  const bool appeared = wait_for(dir / "b" / "out" / "checkpoints" / "step-000000004.safetensors", pid, 300);
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(appeared) << test::slurp(dir / "b" / "first.log");
  ASSERT_TRUE(WIFSIGNALED(status)) << "the run finished before it could be killed";
  auto b = test::run_iadgpt({"--threads", "2", "train", "--quiet", "--config", cfg_b.string()});
  ASSERT_EQ(b.exit_code, 0) << b.err;
  const auto summary = json::parse(b.out);
  EXPECT_GE(summary["resumed_from"].get<int64_t>(), 4);
  EXPECT_LT(summary["resumed_from"].get<int64_t>(), 9);
  for (const auto& f : kOutputs)
    EXPECT_TRUE(bytes_of(dir / "a" / "out" / f) == bytes_of(dir / "b" / "out" / f)) << f << " differs after resume";
  // The output is a bundle that `detect --model` / `chat --model` read (every file and width checked).
  const auto bundle = model::read_bundle(dir / "b" / "out");
  EXPECT_TRUE(bundle.lora.has_value());
  EXPECT_EQ(bundle.taps, (std::vector<int64_t>{0, 1, 2, 3}));
  // The JSONL log has every step exactly once (the killed run's extra steps were dropped).
  for (int64_t s = 1; s <= 9; ++s) EXPECT_EQ(log_lines_with_step(dir / "b" / "out" / "train.jsonl", s), 1) << "step " << s;
  // keep = 2: only the newest two checkpoints remain.
  EXPECT_EQ(train::CheckpointStore(dir / "b" / "out" / "checkpoints", 2).list().size(), 2u);
}

TEST(TrainCli, SigtermSavesACheckpointAndExits130) {
  const auto dir = test::scratch("train-sigterm");
  auto cfg = small_config(dir / "out");
  cfg["checkpoint_every"] = 0;  // only the signal writes one before the end of stage 1
  cfg["stages"] = {{{"stage", 1}, {"steps", 400}}};
  const auto file = write_config(dir, cfg);
  const pid_t pid = spawn({"--threads", "2", "train", "--config", file.string()}, dir / "log");
  // The first step's log line means training has started.
  const auto log = dir / "out" / "train.jsonl";
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(300);
  while (std::chrono::steady_clock::now() < end && (!fs::exists(log) || fs::file_size(log) == 0))
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << test::slurp(dir / "log");
  EXPECT_EQ(WEXITSTATUS(status), 130) << test::slurp(dir / "log");
  auto ckpts = train::CheckpointStore(dir / "out" / "checkpoints", 3).list();
  ASSERT_EQ(ckpts.size(), 1u);
  EXPECT_GE(ckpts[0].first, 1);
  EXPECT_LT(ckpts[0].first, 400);
}

TEST(Checkpoints, AWriteKilledMidwayNeverReplacesThePreviousGoodOne) {
  const auto dir = test::scratch("ckpt-torn") / "checkpoints";
  train::CheckpointStore store(dir, 3);
  io::TensorMap good{{"w", torch::arange(12, torch::kFloat32)}};
  store.save(1, good, {{"k", "v"}});
  // A child writes a 12 MiB checkpoint and dies (as by kill -9) after the first 1 MiB chunk.
  // The tensor is made before fork: libtorch's thread pool does not survive a fork.
  io::TensorMap big{{"w", torch::ones({3 << 20}, torch::kFloat32)}};
  const pid_t pid = fork();
  if (pid == 0) {
    store.save(2, big, {}, [](size_t written) {
      if (written >= (1 << 20)) _exit(9);
    });
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 9) << "the child must die mid-write";
  EXPECT_TRUE(fs::exists(dir / ".step-000000002.safetensors.tmp")) << "the torn temporary file is left behind";
  auto all = store.list();
  ASSERT_EQ(all.size(), 1u) << "a torn write must not appear as a checkpoint";
  auto latest = store.latest();
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step, 1);
  EXPECT_TRUE(torch::equal(latest->tensors.at("w"), good.at("w")));
  EXPECT_EQ(latest->metadata.at("k"), "v");
  // The next save goes through and replaces the temporary.
  store.save(2, good, {});
  EXPECT_EQ(store.latest()->step, 2);
  EXPECT_FALSE(fs::exists(dir / ".step-000000002.safetensors.tmp"));
}

TEST(TrainCli, TwoProcessesWithBatchBEqualOneWithBatchTwoB) {
  const auto dir = test::scratch("train-ddp");
  auto cfg = small_config(dir / "one");
  cfg["batch_size"] = 4;
  cfg["stages"] = {{{"stage", 1}, {"steps", 3}}, {{"stage", 2}, {"steps", 1}}, {{"stage", 3}, {"steps", 1}}};
  cfg["checkpoint_every"] = 0;
  // One thread everywhere: a kernel's reduction split depends on the thread count.
  auto one = test::run_iadgpt({"--threads", "1", "train", "--quiet", "--config", write_config(dir, cfg, "one.json").string()});
  ASSERT_EQ(one.exit_code, 0) << one.err;

  cfg["out"] = (dir / "two").string();
  const auto two_cfg = write_config(dir, cfg, "two.json").string();
  const auto master = fmt::format("127.0.0.1:{}", 20000 + getpid() % 20000);
  test::RunResult r1;
  std::thread rank1([&] {
    r1 = test::run_iadgpt({"--threads", "1", "train", "--quiet", "--config", two_cfg, "--world-size", "2", "--rank", "1",
                           "--master", master});
  });
  auto r0 = test::run_iadgpt({"--threads", "1", "train", "--quiet", "--config", two_cfg, "--world-size", "2", "--rank",
                              "0", "--master", master});
  rank1.join();
  ASSERT_EQ(r0.exit_code, 0) << r0.err;
  ASSERT_EQ(r1.exit_code, 0) << r1.err;
  // Tolerance 1e-5: the gradients of the two halves are summed by Gloo instead of inside one
  // backward pass (different summation order, ~1e-7 relative per step over 5 AdamW steps).
  double worst = 0;
  for (const auto& f : kOutputs) {
    auto a = io::load_safetensors(dir / "one" / f), b = io::load_safetensors(dir / "two" / f);
    ASSERT_EQ(a.size(), b.size()) << f;
    for (const auto& [k, t] : a) {
      const double d = (t - b.at(k)).abs().max().item<double>();
      worst = std::max(worst, d);
      EXPECT_LE(d, 1e-5) << f << " " << k;
    }
  }
  std::printf("two ranks vs one process: max |Δ| = %.3g\n", worst);
  // And training moved the weights (so equality is not trivial): the TGE pathways start at zero.
  auto tge = io::load_safetensors(dir / "two" / "tge.safetensors");
  EXPECT_GT(tge.at("normal_path.weight").abs().max().item<double>(), 0.0);
}

// bf16_autocast: the same run under CPU autocast. Step 1's statistics are the forward and backward
// of identical initial weights on identical examples (the update comes after them), and fp32 runs
// are deterministic (TrainCli.KillNineThenResumeGivesBitwiseTheSameWeights), so any difference
// there is the precision of the computation alone. The weights themselves stay fp32.
TEST(TrainCli, Bf16AutocastTrainsInBf16AndKeepsFp32Weights) {
  const auto dir = test::scratch("train-bf16");
  std::map<bool, io::TensorMap> mmf;
  std::map<bool, json> first_step;
  for (const bool bf16 : {false, true}) {
    const auto sub = dir / (bf16 ? "bf16" : "fp32");
    auto cfg = small_config(sub / "out");
    cfg["stages"] = {{{"stage", 2}, {"steps", 2}}};
    cfg["checkpoint_every"] = 0;
    cfg["bf16_autocast"] = bf16;
    auto r = test::run_iadgpt({"--threads", "2", "train", "--quiet", "--config", write_config(sub, cfg).string()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    mmf[bf16] = io::load_safetensors(sub / "out" / "mmf.safetensors");
    std::ifstream log(sub / "out" / "train.jsonl");
    for (std::string line; std::getline(log, line);) {
      auto j = json::parse(line);
      if (j.value("step", int64_t{0}) == 1 && !j.contains("event")) first_step[bf16] = j;
    }
    ASSERT_TRUE(first_step.count(bf16)) << "no step 1 in the log";
  }
  // Stage 2's losses: CE through the LLM (LoRA), focal and dice through the decoder's maps, and the
  // gradient norm of the backward. bf16 keeps 8 significant bits (unit roundoff u = 2^-8 ≈ 3.9e-3)
  // against fp32's 24 (6e-8). Lower bound 1e-5: a run in fp32, whatever its summation order, stays
  // within a few 1e-7 — only reduced-precision matmuls/convs move a loss this far (measured on
  // 2 cores: CE 1e-4, dice 7e-4, focal 1.2e-2, gradient norm 0.17; the CE of a near-uniform
  // 512-way softmax is the least sensitive). Upper bound for the losses 0.05 (13 u): each is a
  // mean over many rounded terms, so bf16 alone cannot move it further; a broken forward would.
  // The gradient norm, a sum of near-cancelling LoRA and MMF gradients, has no such bound.
  for (const auto* key : {"ce", "focal", "dice", "grad_norm"}) {
    const double fp32 = first_step.at(false).at(key).get<double>(), bf16 = first_step.at(true).at(key).get<double>();
    const double rel = std::abs(bf16 - fp32) / std::abs(fp32);
    std::printf("step 1 %-9s fp32 %.9g  bf16 %.9g  relative difference %.3g\n", key, fp32, bf16, rel);
    EXPECT_GT(rel, 1e-5) << key << ": the bf16 run computed in fp32";
    if (std::string(key) != "grad_norm") {
      EXPECT_LT(rel, 0.05) << key;
    }
  }
  const auto& b = mmf.at(true).at("cell_proj.weight");
  EXPECT_EQ(b.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::isfinite(b).all().item<bool>());
}

// ---- what each stage trains (METHOD §3.3) and the few-shot substitution (few_shot_probability) ----

namespace {

// The parameters of every checkpoint of a run, by global step ("param.<part>.<name>" keys).
std::map<int64_t, io::TensorMap> checkpoint_params(const fs::path& out) {
  std::map<int64_t, io::TensorMap> by_step;
  for (const auto& [step, path] : train::CheckpointStore(out / "checkpoints", 100).list()) {
    io::TensorMap params;
    for (const auto& [k, t] : io::load_safetensors(path))
      if (k.rfind("param.", 0) == 0) params[k.substr(6)] = t.clone();
    by_step[step] = std::move(params);
  }
  return by_step;
}

// The adapter learning rate of each logged step (train.jsonl "lr", after the schedule).
std::map<int64_t, double> logged_lr(const fs::path& out) {
  std::map<int64_t, double> lr;
  std::ifstream in(out / "train.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = json::parse(line);
    if (!j.contains("event")) lr[j.at("step").get<int64_t>()] = j.at("lr").get<double>();
  }
  return lr;
}

json stages_config(const fs::path& out, double few_shot_probability, const json& stages) {
  auto cfg = small_config(out);
  cfg["stages"] = stages;
  cfg["checkpoint_every"] = 1;  // a checkpoint after every step: each step's update is visible
  cfg["keep"] = 100;
  cfg["few_shot_probability"] = few_shot_probability;
  return cfg;
}

// Channel 5 of the MMF's first conv reads M_fs (METHOD §1.8: M_l ×4, M_text, M_fs).
torch::Tensor fs_weights(const io::TensorMap& params) { return params.at("mmf.convs.0.weight").select(1, 5); }

}  // namespace

// One run shared by the stage tests: stages 1, 2, 3 of two steps each, few_shot_probability 0.
class TrainStages : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const auto dir = test::scratch("train-stages");
    fs::remove_all(dir);
    const auto cfg = stages_config(dir / "out", 0.0,
                                   {{{"stage", 1}, {"steps", 2}}, {{"stage", 2}, {"steps", 2}}, {{"stage", 3}, {"steps", 2}}});
    run_ = new test::RunResult(test::run_iadgpt({"--threads", "2", "train", "--quiet", "--config", write_config(dir, cfg).string()}));
    if (run_->exit_code == 0) {
      params_ = new std::map<int64_t, io::TensorMap>(checkpoint_params(dir / "out"));
      lr_ = new std::map<int64_t, double>(logged_lr(dir / "out"));
    }
  }
  static void TearDownTestSuite() {
    delete run_;
    delete params_;
    delete lr_;
  }
  void SetUp() override {
    ASSERT_EQ(run_->exit_code, 0) << run_->err;
    ASSERT_EQ(params_->size(), 6u) << "a checkpoint per step";
  }
  static test::RunResult* run_;
  static std::map<int64_t, io::TensorMap>* params_;
  static std::map<int64_t, double>* lr_;
};
test::RunResult* TrainStages::run_ = nullptr;
std::map<int64_t, io::TensorMap>* TrainStages::params_ = nullptr;
std::map<int64_t, double>* TrainStages::lr_ = nullptr;

// METHOD §3.3: stage 1 trains the TGE (llama_proj included), stage 2 the decoder and the MMF,
// stage 3 the TGE and the MMF; LoRA trains in every stage. Between two consecutive checkpoints
// (one update of the step's stage) every tensor of a trained part changes and every tensor of a
// frozen part stays bitwise the same (a frozen part gets no AdamW step, not even weight decay).
TEST_F(TrainStages, EachStageTrainsExactlyItsParts) {
  const std::map<int64_t, std::set<std::string>> trains = {{1, {"tge", "lora"}}, {2, {"decoder", "mmf", "lora"}},
                                                           {3, {"tge", "mmf", "lora"}}};
  const std::map<int64_t, int64_t> stage_of_step = {{2, 1}, {3, 2}, {4, 2}, {5, 3}, {6, 3}};
  for (const auto& [step, stage] : stage_of_step) {
    const auto& before = params_->at(step - 1);
    const auto& after = params_->at(step);
    ASSERT_EQ(before.size(), after.size());
    std::set<std::string> seen;
    for (const auto& [name, t] : after) {
      const auto part = name.substr(0, name.find('.'));
      seen.insert(part);
      const bool changed = !torch::equal(t, before.at(name));
      EXPECT_EQ(changed, trains.at(stage).count(part) == 1)
          << "step " << step << " (stage " << stage << "): " << name << (changed ? " changed" : " did not change");
    }
    EXPECT_EQ(seen, (std::set<std::string>{"decoder", "tge", "mmf", "lora"}));
  }
  // llama_proj is part of the TGE's stages (PandaGPT's projection trains with it).
  EXPECT_FALSE(torch::equal(params_->at(1).at("tge.llama_proj.weight"), params_->at(2).at("tge.llama_proj.weight")));
}

// few_shot_probability 0: the MMF's M_fs channel is zero in every step, so the first conv's
// weights on that channel get exactly zero gradient and move by AdamW's weight decay alone,
// w ← w·(1 − lr·wd), while the other channels take real steps (≈ lr each with Adam).
TEST_F(TrainStages, FewShotProbabilityZeroNeverFeedsTheFewShotMap) {
  const double wd = 1e-3;  // the config default (METHOD §3.3)
  for (int64_t step = 3; step <= 6; ++step) {  // stages 2 and 3 train the MMF
    const auto& before = params_->at(step - 1);
    const auto& after = params_->at(step);
    const double lr = lr_->at(step);
    const auto decayed = fs_weights(before).to(torch::kFloat64) * (1.0 - lr * wd);
    // fp32 rounding of one product: ≤ 2^-24·|w| < 1e-8 (|w| < 0.2); a gradient step is ≈ lr = 1e-3.
    EXPECT_LT((fs_weights(after).to(torch::kFloat64) - decayed).abs().max().item<double>(), 1e-6) << "step " << step;
    const auto others = after.at("mmf.convs.0.weight").slice(1, 0, 5) - before.at("mmf.convs.0.weight").slice(1, 0, 5);
    EXPECT_GT(others.abs().max().item<double>(), 0.1 * lr) << "step " << step << ": the MMF did not train";
  }
}

// few_shot_probability 1: every example's MMF input carries the references' M_fs. Six stage-2
// stages of one step each, batch 1: every step is one example with fresh AdamW moments, so its
// update of the M_fs channel's weights is lr·|g|/(|g| + ε) ≈ lr where the example fed M_fs, and
// weight decay alone (1e-6·|w|) where it did not. The MMF before them is the initial one: stage 1
// freezes it (TrainStages.EachStageTrainsExactlyItsParts).
TEST(TrainCli, FewShotProbabilityOneFeedsTheFewShotMapToTheMmfEveryStep) {
  const auto dir = test::scratch("train-few-shot-one");
  fs::remove_all(dir);
  json stages = {{{"stage", 1}, {"steps", 1}}};
  for (int i = 0; i < 6; ++i) stages.push_back({{"stage", 2}, {"steps", 1}});
  auto cfg = stages_config(dir / "out", 1.0, stages);
  cfg["batch_size"] = 1;
  auto r = test::run_iadgpt({"--threads", "2", "train", "--quiet", "--config", write_config(dir, cfg).string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto params = checkpoint_params(dir / "out");
  ASSERT_EQ(params.size(), 7u);
  const auto lr = logged_lr(dir / "out");
  for (int64_t step = 2; step <= 7; ++step) {
    const auto moved = (fs_weights(params.at(step)) - fs_weights(params.at(step - 1))).abs();
    EXPECT_GT(moved.max().item<double>(), 0.5 * lr.at(step)) << "step " << step << ": no M_fs in the MMF input";
    // Most of the channel's 16·9 weights get a gradient (weight decay moves none this far).
    EXPECT_GT((moved > 0.1 * lr.at(step)).to(torch::kFloat32).mean().item<double>(), 0.5) << "step " << step;
  }
  // The few-shot-only run writes a few-shot bundle (inference must then give references).
  EXPECT_EQ(model::read_bundle(dir / "out").mode, "few-shot");
}

// map "few-shot": the MMF reads M_fs alone, so the first conv's weights on the four layer maps and
// M_text get exactly zero gradient (AdamW's weight decay alone moves them: w ← w·(1 − lr·wd)),
// while those on M_fs take real steps; the bundle says so, and inference feeds the same stack
// (IadGptPipeline.BundleMapFewShotDrawsMfsAndTheMmfReadsItAlone).
TEST(TrainCli, MapFewShotFeedsTheMmfTheFewShotMapAlone) {
  const auto dir = test::scratch("train-map-few-shot");
  fs::remove_all(dir);
  json stages = {{{"stage", 1}, {"steps", 1}}, {{"stage", 2}, {"steps", 3}}};
  auto cfg = stages_config(dir / "out", 1.0, stages);
  cfg["map"] = "few-shot";
  auto r = test::run_iadgpt({"--threads", "2", "train", "--quiet", "--config", write_config(dir, cfg).string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto params = checkpoint_params(dir / "out");
  const auto lr = logged_lr(dir / "out");
  const double wd = 1e-3;  // the config default (METHOD §3.3)
  for (int64_t step = 2; step <= 4; ++step) {
    const auto& before = params.at(step - 1).at("mmf.convs.0.weight");
    const auto& after = params.at(step).at("mmf.convs.0.weight");
    const auto decayed = before.slice(1, 0, 5).to(torch::kFloat64) * (1.0 - lr.at(step) * wd);
    // fp32 rounding of one product: ≤ 2^-24·|w| < 1e-8; a gradient step is ≈ lr = 1e-3.
    EXPECT_LT((after.slice(1, 0, 5).to(torch::kFloat64) - decayed).abs().max().item<double>(), 1e-6) << "step " << step;
    EXPECT_GT((after.select(1, 5) - before.select(1, 5)).abs().max().item<double>(), 0.1 * lr.at(step)) << "step " << step;
  }
  const auto bundle = model::read_bundle(dir / "out");
  EXPECT_EQ(bundle.map, "few-shot");
  EXPECT_EQ(bundle.mode, "few-shot");
}

// instructions: PandaGPT/LLaVA JSON entries mixed in at `share`; their steps are logged, they train
// (CE only) and the run ends with a bundle like any other.
TEST(TrainCli, InstructionDataIsMixedIntoTrainingAtItsShare) {
  const auto dir = test::scratch("train-instructions");
  const json entries = json::array(
      {{{"image_name", "00.jpg"},
        {"conversation", {{{"from", "human"}, {"value", "<image>\nWhat is in the picture?"}},
                          {{"from", "gpt"}, {"value", "A hazelnut on a dark background."}}}}},
       {{"image", "01.jpg"},
        {"conversations", {{{"from", "human"}, {"value", "Describe the shell."}},
                           {{"from", "gpt"}, {"value", "It is brown and smooth."}}}}}});
  fs::create_directories(dir);
  std::ofstream(dir / "llava.json") << entries.dump();
  auto cfg = small_config(dir / "out");
  cfg["stages"] = {{{"stage", 1}, {"steps", 3}}, {{"stage", 2}, {"steps", 2}}};
  cfg["checkpoint_every"] = 0;
  cfg["instructions"] = {{"file", (dir / "llava.json").string()},
                         {"images", test::data("hazelnut_toy/hazelnut/train/good").string()},
                         {"share", 0.5}};
  auto r = test::run_iadgpt({"--threads", "2", "train", "--config", write_config(dir, cfg).string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("(2 instruction)"), std::string::npos) << r.err;
  int64_t mixed = 0, slots = 0;
  std::ifstream log(dir / "out" / "train.jsonl");
  for (std::string line; std::getline(log, line);) {
    auto j = json::parse(line);
    if (j.contains("event")) continue;
    mixed += j.at("instructions").get<int64_t>();
    slots += 2;  // batch size
  }
  EXPECT_EQ(slots, 10);
  EXPECT_GT(mixed, 0) << "no instruction example was drawn at share 0.5";
  EXPECT_LT(mixed, slots) << "every slot was an instruction example at share 0.5";
  EXPECT_NO_THROW(model::read_bundle(dir / "out"));
}

TEST(TrainCli, BadConfigsFailAtStartWithASpecificError) {
  const auto dir = test::scratch("train-bad");
  struct Case {
    std::string name;
    std::function<void(json&)> edit;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"missing llm", [](json& j) { j.erase("llm"); }, "'llm': expected a path (required)"},
      {"unknown key", [](json& j) { j["batch"] = 3; }, "unknown key 'batch'"},
      {"bad tuning", [](json& j) { j["llm_tuning"] = "half"; }, "'llm_tuning': expected one of frozen, lora, full"},
      {"stage 4", [](json& j) { j["stages"][0]["stage"] = 4; }, "'stages[0].stage': expected an integer in [1, 3]"},
      {"zero steps", [](json& j) { j["stages"][1]["steps"] = 0; }, "'stages[1].steps'"},
      {"missing dataset", [](json& j) { j["datasets"][0]["root"] = "/nonexistent/mvtec"; }, "'datasets[0].root': expected an existing path"},
      {"missing category", [](json& j) { j["datasets"][0]["categories"] = {"bottle"}; }, "bottle"},
      {"lora dropout", [](json& j) { j["lora"]["dropout"] = 1.5; }, "'lora.dropout'"},
      {"betas", [](json& j) { j["betas"] = {0.9}; }, "'betas'"},
      {"perlin without textures", [](json& j) { j["synthesis"] = "perlin"; }, "'textures'"},
      {"batch not divisible", [](json& j) { j["batch_size"] = 3; j["grad_accum"] = 2; }, "'batch_size' 3 must be a multiple"},
      {"map warm-up key", [](json& j) { j["map_warmup"] = {{"step", 10}}; }, "unknown key 'map_warmup.step'"},
      {"map warm-up steps", [](json& j) { j["map_warmup"] = {{"steps", -1}}; }, "'map_warmup.steps'"},
      {"decision weight", [](json& j) { j["decision_weight"] = -1; }, "'decision_weight'"},
      {"map value", [](json& j) { j["map"] = "blend"; }, "'map': expected one of auto, few-shot"},
      {"map few-shot needs references every step", [](json& j) { j["map"] = "few-shot"; j["few_shot_probability"] = 0.5; },
       "'map': expected 'auto' unless few_shot_probability is 1"},
      {"validation root", [](json& j) { j["validation"] = {{"root", "/nonexistent/val"}}; },
       "'validation.root': expected an existing path"},
      {"validation categories", [](json& j) {
         j["validation"] = {{"root", test::data("hazelnut_toy").string()}, {"categories", "hazelnut"}};
       }, "'validation.categories': expected an array of names"},
      {"validation kind", [](json& j) { j["validation"] = {{"kind", "coco"}, {"root", test::data("hazelnut_toy").string()}}; },
       "'validation.kind': expected one of"},
      {"validation class not trained", [](json& j) {
         j["validation"] = {{"root", test::data("mvtec_ad").string()}, {"categories", {"grid"}}};
       }, "'validation.categories': expected training categories only"},
      {"dataset categories", [](json& j) { j["datasets"][0]["categories"] = {1}; },
       "'datasets[0].categories': expected an array of names"},

      {"eval pairs", [](json& j) { j["eval_per_image"] = 0; }, "'eval_per_image'"},
      {"bf16 flag", [](json& j) { j["bf16_autocast"] = "yes"; }, "'bf16_autocast': expected true or false"},
      {"gradients", [](json& j) { j["gradients"] = "per-batch"; }, "'gradients': expected one of per_example, batched"},
      {"checkpointing flag", [](json& j) { j["gradient_checkpointing"] = 1; }, "'gradient_checkpointing': expected true or false"},
      {"llm dtype", [](json& j) { j["llm_dtype"] = "f16"; }, "'llm_dtype': expected one of f32, bf16"},
      {"bf16 full fine-tune", [](json& j) { j["llm_dtype"] = "bf16"; j["llm_tuning"] = "full"; },
       "'llm_dtype': expected f32 with llm_tuning full"},
      {"instruction file", [](json& j) { j["instructions"] = {{"file", "/nonexistent.json"}, {"images", "/tmp"}}; },
       "'instructions.file': expected an existing path"},
      {"instruction entry", [&dir](json& j) {
         std::ofstream(dir / "bad_llava.json") << R"([{"image": "00.jpg", "conversations": [{"from": "gpt", "value": "x"}]}])";
         j["instructions"] = {{"file", (dir / "bad_llava.json").string()},
                              {"images", test::data("hazelnut_toy/hazelnut/train/good").string()}};
       }, "entry 0: no human turn followed by a gpt turn"},
      {"instruction image", [&dir](json& j) {
         std::ofstream(dir / "bad_image.json") << R"([{"image": "missing.png", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}])";
         j["instructions"] = {{"file", (dir / "bad_image.json").string()},
                              {"images", test::data("hazelnut_toy/hazelnut/train/good").string()}};
       }, "entry 0: image"},
  };
  for (const auto& c : cases) {
    auto j = small_config(dir / "out");
    c.edit(j);
    const auto t0 = std::chrono::steady_clock::now();
    auto r = test::run_iadgpt({"train", "--config", write_config(dir, j).string()});
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(r.exit_code, 2) << c.name << ": " << r.err;
    EXPECT_NE(r.err.find(c.expected), std::string::npos) << c.name << ": " << r.err;
    EXPECT_LT(seconds, 10.0) << c.name << ": must fail before any work";
    EXPECT_FALSE(fs::exists(dir / "out" / "checkpoints")) << c.name;
  }
  // Distributed flags too.
  auto r = test::run_iadgpt({"train", "--config", write_config(dir, small_config(dir / "out")).string(), "--world-size",
                             "2", "--rank", "2"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--rank must be in [0, 2)"), std::string::npos) << r.err;
  r = test::run_iadgpt({"train", "--config", write_config(dir, small_config(dir / "out")).string(), "--world-size", "2",
                        "--rank", "0", "--master", "localhost"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("expected HOST:PORT"), std::string::npos) << r.err;
}


// Issue 16: a config written for CUDA trains on the CPU when `--device cpu` is given, one step.
TEST(TrainerCli, ExplicitCpuDeviceOverridesTheConfigAndTrainsOneStep) {
#ifdef IADGPT_WITH_CUDA
  GTEST_SKIP() << "a CUDA build: the config's cuda is a real device there";
#endif
  const auto dir = test::scratch("train-device");
  fs::remove_all(dir);
  auto cfg = small_config(dir / "out");
  cfg["device"] = "cuda";
  cfg["stages"] = {{{"stage", 1}, {"steps", 1}}};
  cfg["checkpoint_every"] = 0;
  const auto file = write_config(dir, cfg);
  auto refused = test::run_iadgpt({"--threads", "2", "train", "--quiet", "--config", file.string()});
  EXPECT_EQ(refused.exit_code, 2) << refused.err;
  EXPECT_NE(refused.err.find("training device cuda: CUDA is not available in this build"), std::string::npos)
      << refused.err;
  EXPECT_FALSE(fs::exists(dir / "out" / "iadgpt.json"));  // refused before any work

  auto r = test::run_iadgpt({"--threads", "2", "train", "--quiet", "--device", "cpu", "--config", file.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["steps"], 1) << r.out;
  EXPECT_TRUE(fs::exists(dir / "out" / "iadgpt.json"));

  cfg["device"] = "tpu";
  auto bad = test::run_iadgpt({"train", "--quiet", "--config", write_config(dir, cfg, "bad.json").string()});
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
  EXPECT_NE(bad.err.find("'device'"), std::string::npos) << bad.err;
}
