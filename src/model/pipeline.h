// The IAD-GPT inference pipeline (METHOD §1.1–1.10): image (+ optional normal references) →
// anomaly maps → E_img (TGE) + E_expert (MMF, or AnomalyGPT's prompt learner) → the Vicuna-v0
// prompt of §1.9 → a fast Yes/No decision from one prefill and the generated answer, with
// position words from the map and a defect type from the APG keywords.
//
//   model::IadGpt m(model::read_bundle("bundle"));
//   m.set_class("bottle");
//   auto r = m.inspect(image);                 // r.p_yes, r.answer, r.position, r.defect_type, r.map
//   auto a = m.ask("Where is the defect?");    // multi-turn, same image
//
// The heads (maps → E_img, E_expert) are model/heads.h, shared with training.
#pragma once
#include <torch/torch.h>

#include <opencv2/core.hpp>

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "anomaly/detector.h"
#include "anomaly/maps.h"
#include "anomaly/position.h"
#include "anomaly/prompts.h"
#include "llm/chat.h"
#include "llm/model.h"
#include "llm/tokenizer.h"
#include "model/adapters.h"
#include "model/bundle.h"
#include "model/heads.h"

namespace iadgpt::anomaly {
struct AbnormalPrompts;  // anomaly/apg.h
}
namespace iadgpt::llm {
class DecodeLoop;  // llm/batch.h
}


namespace iadgpt::model {

struct InspectOptions {
  std::string question;     // empty: "Is there any anomaly in the image?"
  bool generate = true;     // false: the fast decision only (answer from the map phrasing)
  int64_t max_tokens = 64;
  uint64_t seed = 0;
  double temperature = 0;   // 0 = greedy
  std::function<bool(std::string_view)> on_text;  // streamed answer text; return false to stop
  double top_p = 1.0;             // nucleus sampling (with temperature > 0); 1 = off
  std::vector<std::string> stop;  // stop strings besides Vicuna v0's "###"
  // Set: runs the prompt's prefill (the input rows from cache.pos → fp32 logits [1, V] at the last
  // row) in place of llm::forward; serve --batch passes one that runs it together with the other
  // inspections of its batch (llm::PrefillBatch).
  std::function<torch::Tensor(llm::KvCache& cache, const torch::Tensor& x)> prefill;
};

struct Timings { double encode = 0, maps = 0, prefill = 0, generate = 0; };  // seconds

struct Inspection {
  float score = 0;          // image score (max of the map)
  double p_yes = 0;         // P("Yes") restricted to the Yes/No first tokens, after Bundle::decision_bias
  double log_odds = 0;      // log P(Yes)/P(No) of the same (p_yes = sigmoid(log_odds); keeps the order where p_yes rounds to 1)
  bool anomalous = false;   // the LLM's decision (first generated token, or p_yes > 0.5)
  std::string answer;       // generated text; without generation the §1.10 phrasing of the map
  std::string position;     // "top left", "center and bottom right", ... (empty: no region)
  std::string defect_type;  // best APG keyword of the largest region (empty: none / no APG)
  std::vector<anomaly::Region> regions;  // of the map at the image's own size
  torch::Tensor map;        // [H, W] at the image's own size
  Timings timings;
  int64_t generated_tokens = 0;  // tokens of the generated answer (0 when options.generate is false)
  int64_t prompt_tokens = 0;     // positions of the prompt (text tokens + image/expert embedding rows)
  std::string stop_reason;       // llm::Generation::stop_reason ("eos", "stop", "length", "callback"); "" without generation
};

// One follow-up answer (IadGpt::reply) with what generation reports about it.
struct Reply {
  std::string text;              // the answer as kept in history (llm::clean_answer)
  std::string stop_reason;       // "eos", "stop", "length" (max_tokens or the context), "callback"
  int64_t prompt_tokens = 0;     // positions of the whole conversation's prompt
  int64_t generated_tokens = 0;
};

// The adapter outputs that enter the LLM for the last inspected image (for tests and tools).
struct ImageTokens {
  torch::Tensor embedding;      // [1, D] e
  torch::Tensor masks;          // [1, 6, S, S] M_l ×4, M_text, M_fs (MMF input)
  torch::Tensor image_token;    // [1, H] E_img
  torch::Tensor expert_tokens;  // [1, 18, H] E_expert
};

class IadGpt {  // not thread-safe: one per worker, the workers' copies made by share()
 public:
  explicit IadGpt(const Bundle& bundle);
  // A pipeline on the same weights (towers, decoder, LLM, TGE/MMF: tensors shared, not copied)
  // with its own KV cache, class, references and conversation: a server loads the bundle once
  // and gives each worker a share(). The weights are only read, so shares may run on different
  // threads at once. Calibration set later with set_decision_bias stays with its own copy.
  IadGpt share();
  ~IadGpt();
  IadGpt(IadGpt&&) noexcept;
  IadGpt& operator=(IadGpt&&) noexcept;

  void set_class(std::string_view class_name);
  void set_references(const std::vector<cv::Mat>& rgb8);   // {} clears
  Inspection inspect(const cv::Mat& rgb8, const InspectOptions& options = {});
  // The vision tower over several images in one forward (serve's --batch): independent of the
  // class and references, so images of different requests share it; each is then inspected by
  // inspect(rgb8[i], encoded.image(i), ...) on any share() of this pipeline. The same result as
  // inspect(rgb8[i]) up to the summation order of the batched GEMMs.
  anomaly::Detector::Encoded encode(const std::vector<cv::Mat>& rgb8);
  // inspect() of an image encoded before (`encoded` holds that image alone).
  Inspection inspect(const cv::Mat& rgb8, const anomaly::Detector::Encoded& encoded, const InspectOptions& options);
  // multi-turn chat about the last inspected image (keeps image tokens + history + KV cache).
  // inspect and ask cut the answer at the room the prompt leaves in the context (max_tokens is
  // clamped, as llama.cpp does); InputError naming the token counts when the prompt itself
  // leaves no room.
  std::string ask(std::string_view message, const InspectOptions& options = {});
  Reply reply(std::string_view message, const InspectOptions& options = {});  // ask + what stopped it, token counts
  // Replaces the turns about the last inspected image, e.g. by a client's own record of the
  // conversation (OpenAI-style APIs send the assistant's earlier answers back). The next reply
  // continues from them; the image prefix of the KV cache is kept.
  void set_history(std::vector<llm::Turn> turns);
  void reset_conversation();
  // Answers are generated through `loop` (llm/batch.h; it must run this pipeline's language
  // model): their decode steps are shared with other sequences, e.g. the other workers' of a
  // server. The tokens are the same as without it. share() passes it on; nullptr: on its own.
  void set_decode_loop(std::shared_ptr<llm::DecodeLoop> loop);
  const Bundle& bundle() const;
  // The calibration of the Yes/No decision for a class (Bundle::decision_bias: log-odds added to
  // "Yes" against "No"); fit it with fit_decision_bias on labelled parts the model will not inspect.
  void set_decision_bias(std::string_view class_name, double log_odds);

  // Introspection (tests, bench, server status).
  const ImageTokens& image_tokens() const;         // of the last inspect
  std::string question(std::string_view user_question) const;  // class description + question
  const llm::LlamaModel& llm() const;
  const llm::Tokenizer& tokenizer() const;
  std::vector<int64_t> yes_no_tokens() const;      // decision token ids of "Yes" and "No" after "### Assistant:"
  std::vector<int64_t> answer_prefix() const;      // pieces both share, forced before the decision (LLaMA: none)
  const std::vector<llm::Turn>& history() const;   // turns about the last image (first: class question)
  // Logits [T, V] of the first-turn prompt for the last image, from a fresh cache (tests: §1.9 layout).
  torch::Tensor prompt_logits(std::string_view user_question = {}) const;

 private:
  struct State;
  explicit IadGpt(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// The decision tokens after "### Assistant:". SentencePiece writes " Yes" as ▁Yes (one token in
// LLaMA's vocabulary); small vocabularies split it (▁ Y es): the pieces both words share are the
// answer's forced `prefix`, and the decision is taken at the first piece where they differ.
// InputError when the tokenizer cannot tell the two words apart.
struct DecisionTokens {
  std::vector<int64_t> prefix;
  int64_t yes = 0, no = 0;
};
DecisionTokens decision_tokens(const llm::Tokenizer& tokenizer);

// Decision calibration: the log-odds bias b added to logit P(Yes) of labelled parts (1 =
// anomalous) that best separates them, i.e. the cut t = −b with the highest balanced accuracy; of
// equally good cuts, the middle of the one nearest the LLM's own (0). When that beats the LLM's own
// cut by less than `min_gain` (balanced accuracy), b = 0: on a few parts a better cut is often
// noise (demo, issue 13: a class whose validation normals sat at +5.7 moved its cut past held-out
// defects at +4.6 and cost 4 of its 20 held-out parts). Needs both labels (InputError).
double fit_decision_bias(std::span<const double> p_yes, std::span<const uint8_t> labels, double min_gain = 0.05);

// The answer phrasing of METHOD §1.10 without the LLM: No / Yes (no region) / AnomalyGPT's region
// phrasing, with ", it looks like a {type}." when a defect type is known.
std::string map_answer(const std::vector<anomaly::Region>& regions, bool anomalous, std::string_view defect_type = {});
// "top left", "top left and center", "top, left and bottom" (distinct cells, largest region first).
std::string position_words(const std::vector<anomaly::Region>& regions);

// METHOD §1.9 description + question: AnomalyGPT's per-class description (its 15 MVTec AD and
// 12 VisA classes; a generic one otherwise); with APG keywords the description lists them.
std::string class_question(std::string_view class_name, const anomaly::AbnormalPrompts* apg,
                           std::string_view question = "Is there any anomaly in the image?");

}  // namespace iadgpt::model
