#include "model/pipeline.h"
#include "model/prompt.h"

#include <fmt/format.h>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "anomaly/apg.h"
#include "anomaly/detector.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "io/heap.h"
#include "llm/batch.h"
#include "llm/chat.h"
#include "llm/generate.h"
#include "llm/lora.h"
#include "llm/model.h"
#include "llm/tokenizer.h"
#include "model/class_prompts.h"
#include "nn/device.h"
#include "nn/weights.h"

namespace iadgpt::model {
namespace F = torch::nn::functional;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Answers are Vicuna-v0 turns: they end at "###".
llm::GenerateOptions generate_options(const InspectOptions& options) {
  llm::GenerateOptions gen;
  gen.max_tokens = options.max_tokens;
  gen.sampling.temperature = options.temperature;
  gen.sampling.seed = options.seed;
  gen.sampling.top_p = options.top_p;
  gen.stop = llm::stop_strings(llm::ChatTemplate::VicunaV0);
  for (const auto& stop : options.stop)
    if (!stop.empty()) gen.stop.push_back(stop);
  gen.on_text = options.on_text;
  return gen;
}

constexpr const char* kDefaultQuestion = "Is there any anomaly in the image?";

// The answer may take what the prompt leaves of the context: max_tokens is clamped to it, as
// llama.cpp clamps n_predict to n_ctx - n_prompt. Only a prompt that leaves no room for a single
// answer token is refused, naming what it needs.
int64_t answer_room(int64_t prompt_tokens, int64_t context, std::string_view what) {
  if (prompt_tokens + 1 > context)
    throw InputError(fmt::format("{} needs {} tokens of prompt plus at least 1 for the answer, but the context holds {} "
                                 "tokens; {}",
                                 what, prompt_tokens, context,
                                 what == "the conversation" ? "reset it (inspect the image again)"
                                                            : "ask a shorter question"));
  return context - prompt_tokens;
}

// Largest 8-connected component of `map > threshold` as a float mask [S, S] (empty when none).
torch::Tensor largest_component(const torch::Tensor& map, double threshold) {
  auto m = map.to(torch::kFloat32).contiguous();
  cv::Mat values(static_cast<int>(m.size(0)), static_cast<int>(m.size(1)), CV_32F, m.data_ptr<float>());
  cv::Mat binary = values > threshold;
  cv::Mat labels, stats, centroids;
  const int n = cv::connectedComponentsWithStats(binary, labels, stats, centroids, 8, CV_32S);
  int best = 0, best_area = 0;
  for (int i = 1; i < n; ++i) {
    const int area = stats.at<int>(i, cv::CC_STAT_AREA);
    if (area > best_area) best = i, best_area = area;
  }
  if (best == 0) return {};
  cv::Mat mask;
  cv::Mat(labels == best).convertTo(mask, CV_32F, 1.0 / 255.0);
  return torch::from_blob(mask.data, {mask.rows, mask.cols}, torch::kFloat32).clone();
}

}  // namespace

std::string position_words(const std::vector<anomaly::Region>& regions) {
  std::vector<std::string> names;
  for (const auto& r : regions)
    if (std::find(names.begin(), names.end(), r.position) == names.end()) names.push_back(r.position);
  if (names.empty()) return "";
  std::string s = names[0];
  for (size_t i = 1; i < names.size(); ++i) s += (i + 1 == names.size() ? " and " : ", ") + names[i];
  return s;
}

double fit_decision_bias(std::span<const double> p_yes, std::span<const uint8_t> labels, double min_gain) {
  if (p_yes.size() != labels.size())
    throw InputError(fmt::format("decision calibration: {} probabilities for {} labels", p_yes.size(), labels.size()));
  // Log-odds, clamped so that a saturated probability stays a finite, ordered number.
  std::vector<std::pair<double, int>> parts;
  double positives = 0;
  for (size_t i = 0; i < p_yes.size(); ++i) {
    if (!(p_yes[i] >= 0 && p_yes[i] <= 1))
      throw InputError(fmt::format("decision calibration: p_yes[{}] = {} is not a probability", i, p_yes[i]));
    const double p = std::clamp(p_yes[i], 1e-30, 1 - 1e-16);
    parts.emplace_back(std::log(p) - std::log1p(-p), labels[i] ? 1 : 0);
    positives += labels[i] ? 1 : 0;
  }
  const double negatives = static_cast<double>(parts.size()) - positives;
  if (positives == 0 || negatives == 0)
    throw InputError("decision calibration needs both normal and anomalous parts");
  std::sort(parts.begin(), parts.end());
  // The LLM's own cut (log-odds 0) and every cut between sorted[k-1] and sorted[k] (the first k
  // say "No"), scored by balanced accuracy.
  auto balanced_at = [&](double normals_below, double anomalies_below) {
    return 0.5 * (normals_below / negatives + (positives - anomalies_below) / positives);
  };
  double own_normals = 0, own_anomalies = 0;
  for (const auto& [logit, label] : parts)
    if (logit <= 0) (label ? own_anomalies : own_normals) += 1;
  const double own = balanced_at(own_normals, own_anomalies);
  double best = -1, best_t = 0;
  double normals_below = 0, anomalies_below = 0;
  for (size_t k = 0; k <= parts.size(); ++k) {
    if (k > 0) (parts[k - 1].second ? anomalies_below : normals_below) += 1;
    if (k > 0 && k < parts.size() && parts[k].first == parts[k - 1].first) continue;  // not a cut
    const double balanced = balanced_at(normals_below, anomalies_below);
    const double lo = k == 0 ? parts.front().first - 1 : parts[k - 1].first;
    const double hi = k == parts.size() ? parts.back().first + 1 : parts[k].first;
    const double t = 0.5 * (lo + hi);
    if (balanced > best + 1e-12 || (balanced > best - 1e-12 && std::abs(t) < std::abs(best_t))) best = balanced, best_t = t;
  }
  if (best - own < min_gain) return 0.0;  // the LLM's own decision is as good, within the noise of a few parts
  return std::clamp(-best_t, -100.0, 100.0);
}

DecisionTokens decision_tokens(const llm::Tokenizer& tokenizer) {
  const auto yes = tokenizer.encode("Yes");
  const auto no = tokenizer.encode("No");
  size_t common = 0;
  while (common < yes.size() && common < no.size() && yes[common] == no[common]) ++common;
  if (common == yes.size() || common == no.size())
    throw InputError(fmt::format("{}: the tokenizer cannot tell \"Yes\" from \"No\"", tokenizer.path()));
  return {.prefix = {yes.begin(), yes.begin() + static_cast<std::ptrdiff_t>(common)}, .yes = yes[common], .no = no[common]};
}

std::string map_answer(const std::vector<anomaly::Region>& regions, bool anomalous, std::string_view defect_type) {
  if (!anomalous) return "No, there is no anomaly in the image.";
  std::string answer = regions.empty() ? "Yes, there is an anomaly in the image." : anomaly::describe(regions);
  if (!defect_type.empty()) answer = answer.substr(0, answer.size() - 1) + fmt::format(", it looks like a {}.", defect_type);
  return answer;
}

struct IadGpt::State {
  Bundle bundle;
  std::optional<anomaly::Detector> detector;
  llm::LlamaModel llm;
  std::optional<llm::Tokenizer> tokenizer;
  llm::KvCache cache;
  Heads heads;  // TGE and MMF (or prompt learner); the detector runs the decoder
  std::string class_name;
  std::optional<anomaly::AbnormalPrompts> apg;
  torch::Tensor keyword_embeddings;  // [K, D] normalised, APG keywords
  bool have_references = false;
  std::vector<int64_t> yes_no;         // decision tokens
  std::vector<int64_t> answer_prefix;  // pieces "Yes" and "No" share (empty for LLaMA's vocabulary)
  std::shared_ptr<llm::DecodeLoop> loop;  // set: decode steps shared with other sequences (set_decode_loop)

  // The last inspected image and the conversation about it.
  ImageTokens tokens;
  std::vector<llm::Turn> history;
  std::vector<int64_t> prefix_ids;  // what the cache holds after the image prefix (token ids only)
  int64_t prefix_length = 0;        // cache positions of [BOS … E_expert]
  bool have_image = false;

  // The answer from `tail` on: through the shared decode loop when there is one (the same tokens).
  llm::Generation generate(std::span<const llm::Segment> tail, const llm::GenerateOptions& gen) {
    return loop ? loop->generate(*tokenizer, cache, tail, gen) : llm::generate(llm, *tokenizer, cache, tail, gen);
  }

  std::vector<llm::Segment> prompt(std::span<const llm::Turn> hist, std::string_view question) const {
    return anomalygpt_prompt(*tokenizer, tokens.image_token, tokens.expert_tokens[0], hist, question);
  }
};

IadGpt::IadGpt(const Bundle& bundle) : state_(std::make_unique<State>()) {
  auto& s = *state_;
  s.bundle = bundle;
  const auto dtype = bundle.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  const auto device = nn::parse_device(bundle.device, "bundle device");
  auto sources = resolve_sources(bundle);

  anomaly::DetectorOptions dopt;
  dopt.vision = bundle.vision;
  dopt.text = bundle.text;
  dopt.vocab = bundle.vocab;
  dopt.config = bundle.vision_config;
  dopt.decoder = sources.decoder;
  dopt.taps = bundle.taps;
  dopt.size = bundle.image_size;
  dopt.dtype = dtype;
  dopt.vision_quant = vision_quant_format(bundle);
  dopt.device = device;
  dopt.features = true;
  dopt.rotations = bundle.rotations;
  // The detector computes every map the heads read; which one is drawn is chosen in inspect.
  if (bundle.map == "blend") dopt.mode = anomaly::MapMode::Blend;
  s.detector.emplace(dopt);

  s.llm = load_bundle_llm(bundle, sources, dtype);
  llm::move_model(s.llm, device);  // merged (and quantized) on the host first: one copy of the weights on the device
  s.tokenizer.emplace(llm::Tokenizer::from_path(bundle.tokenizer.value_or(bundle.llm)));
  const int64_t hidden = s.llm.config.hidden_size;
  s.cache = llm::KvCache(s.llm, std::min<int64_t>(s.llm.max_positions(), 2048));

  // Widths from the loaded towers: D from the text features of the default class.
  set_class("");
  const int64_t embed_dim = s.detector->text_features().f_text.size(1);

  s.heads = load_heads(bundle, sources, embed_dim, hidden);
  move_heads(s.heads, device);

  const auto decision = decision_tokens(*s.tokenizer);
  s.answer_prefix = decision.prefix;
  s.yes_no = {decision.yes, decision.no};
  io::release_free_heap();  // what loading freed: converted records, merged LoRA factors, 16-bit sources of quantized matrices
}

IadGpt::IadGpt(std::unique_ptr<State> state) : state_(std::move(state)) {}

IadGpt IadGpt::share() {
  auto& s = *state_;
  auto copy = std::make_unique<State>();
  copy->bundle = s.bundle;
  copy->detector.emplace(s.detector->share());
  copy->llm = s.llm;  // a struct of tensors: the copy aliases the same weights
  copy->tokenizer = s.tokenizer;
  copy->cache = llm::KvCache(copy->llm, s.cache.capacity());  // the worker's own
  copy->heads = s.heads;  // module holders: the same TGE/MMF modules, used in eval mode only
  copy->yes_no = s.yes_no;
  copy->answer_prefix = s.answer_prefix;
  copy->loop = s.loop;
  IadGpt shared(std::move(copy));
  shared.set_class("");  // as the constructor leaves it
  return shared;
}

IadGpt::~IadGpt() = default;
IadGpt::IadGpt(IadGpt&&) noexcept = default;
IadGpt& IadGpt::operator=(IadGpt&&) noexcept = default;

const Bundle& IadGpt::bundle() const { return state_->bundle; }
void IadGpt::set_decode_loop(std::shared_ptr<llm::DecodeLoop> loop) {
  if (loop && loop->model_weights() != state_->llm.weights.embed.data_ptr())
    throw InputError("set_decode_loop: the loop runs another language model than this pipeline's");
  state_->loop = std::move(loop);
}
const ImageTokens& IadGpt::image_tokens() const {
  if (!state_->have_image) throw InputError("no image inspected yet");
  return state_->tokens;
}
const llm::LlamaModel& IadGpt::llm() const { return state_->llm; }
const llm::Tokenizer& IadGpt::tokenizer() const { return *state_->tokenizer; }
std::vector<int64_t> IadGpt::yes_no_tokens() const { return state_->yes_no; }

void IadGpt::set_decision_bias(std::string_view class_name, double log_odds) {
  if (!std::isfinite(log_odds) || std::abs(log_odds) > 100)
    throw InputError(fmt::format("decision bias of '{}' must be a log-odds in [-100, 100], found {}", class_name, log_odds));
  state_->bundle.decision_bias[std::string(class_name)] = log_odds;
}
std::vector<int64_t> IadGpt::answer_prefix() const { return state_->answer_prefix; }
const std::vector<llm::Turn>& IadGpt::history() const { return state_->history; }

torch::Tensor IadGpt::prompt_logits(std::string_view user_question) const {
  const auto& s = *state_;
  if (!s.have_image) throw InputError("no image inspected yet");
  auto segments = s.prompt({}, question(user_question));
  llm::KvCache cache(s.llm, s.cache.capacity());
  return llm::forward(s.llm, cache, llm::embed_segments(s.llm, segments), llm::Logits::All);
}

void IadGpt::set_class(std::string_view class_name) {
  auto& s = *state_;
  s.class_name = std::string(class_name);
  // AnomalyGPT's weights were trained without APG: its bundles use APG only from an explicit file.
  const bool use_apg = !class_name.empty() && (s.bundle.expert == "mmf" || s.bundle.prompts);
  s.apg = use_apg ? find_class_prompts(s.bundle, class_name) : std::nullopt;
  // The APG sentences join the abnormal side of F_text (METHOD §1.3): rebuild the detector's text.
  s.detector->set_extra_abnormal(s.apg ? s.apg->sentences : std::vector<std::string>{});
  s.detector->set_class(class_name);
  // Defect-type vocabulary (METHOD §1.10): one text per keyword through the same text tower.
  s.keyword_embeddings = torch::Tensor();
  if (s.apg && !s.apg->keywords.empty()) {
    anomaly::SentenceEncoder encode = [&](const std::vector<std::string>& t) { return s.detector->encode_text(t); };
    s.keyword_embeddings = anomaly::keyword_embeddings(*s.apg, encode);
  }
  reset_conversation();
}

void IadGpt::set_references(const std::vector<cv::Mat>& rgb8) {
  state_->detector->set_references(rgb8);
  state_->have_references = !rgb8.empty();
}

std::string IadGpt::question(std::string_view user_question) const {
  const auto& s = *state_;
  return class_question(s.class_name, s.apg ? &*s.apg : nullptr,
                        user_question.empty() ? std::string_view(kDefaultQuestion) : user_question);
}

void IadGpt::reset_conversation() {
  auto& s = *state_;
  s.history.clear();
  s.prefix_ids.clear();
  s.cache.clear();
}

anomaly::Detector::Encoded IadGpt::encode(const std::vector<cv::Mat>& rgb8) { return state_->detector->encode(rgb8); }

Inspection IadGpt::inspect(const cv::Mat& rgb8, const InspectOptions& options) {
  if (state_->bundle.mode == "few-shot" && !state_->have_references)
    throw InputError("the bundle's mode is few-shot: give reference images (set_references / --reference)");
  return inspect(rgb8, encode({rgb8}), options);
}

Inspection IadGpt::inspect(const cv::Mat& rgb8, const anomaly::Detector::Encoded& encoded, const InspectOptions& options) {
  auto& s = *state_;
  if (s.bundle.mode == "few-shot" && !s.have_references)
    throw InputError("the bundle's mode is few-shot: give reference images (set_references / --reference)");
  if (encoded.batch() != 1)
    throw InputError(fmt::format("inspect: the encoded input holds {} images, not the one inspected", encoded.batch()));
  Inspection r;
  auto d = std::move(s.detector->detect_encoded(encoded)[0]);
  r.timings.encode = d.encode_seconds;
  r.timings.maps = d.map_seconds;

  const auto t_heads = Clock::now();
  {
    torch::NoGradGuard no_grad;
    HeadInputs in;
    in.embedding = d.embedding.to(torch::kFloat32).unsqueeze(0);
    in.layer_maps = d.layer_maps.to(torch::kFloat32).unsqueeze(0);  // [1, L, S, S] (zeros without a decoder)
    if (d.few_shot.defined()) in.few_shot = d.few_shot.to(torch::kFloat32).unsqueeze(0);
    // AnomalyGPT feeds its prompt learner the map it outputs (M_fs with references, else M_text).
    in.prompt_map = d.map.to(torch::kFloat32).unsqueeze(0);
    auto tokens = head_tokens(s.heads, in, s.detector->text_features());
    s.tokens.embedding = in.embedding;
    s.tokens.image_token = tokens.image_token;
    s.tokens.expert_tokens = tokens.expert_tokens;
    s.tokens.masks = tokens.masks;
  }
  r.timings.maps += seconds_since(t_heads);
  s.have_image = true;

  // Map at the image's own size, regions and position words (METHOD §1.10). The bundle's `map`
  // "few-shot" draws and scores M_fs alone (METHOD §1.5's few-shot M).
  if (s.bundle.map == "few-shot" && d.few_shot.defined()) {
    d.map = d.few_shot;
    d.score = anomaly::image_scores(d.few_shot.unsqueeze(0)).item<float>();
  }
  r.score = d.score;
  // The map leaves the model here (regions, PNG, JSON): resized where it is, then to the host.
  r.map = anomaly::resize_map(d.map, rgb8.rows, rgb8.cols).cpu();
  r.regions = anomaly::find_regions(r.map, s.bundle.threshold);
  r.position = position_words(r.regions);
  if (!r.regions.empty() && s.keyword_embeddings.defined() && d.patch_features.defined()) {
    // Defect type: mean P_l over the largest region's patches vs the APG keyword embeddings.
    auto region = largest_component(d.map.cpu(), s.bundle.threshold);
    if (region.defined()) {
      region = region.to(d.patch_features.device());
      const int64_t g = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(d.patch_features.size(1)))));
      auto weights = F::adaptive_avg_pool2d(region.reshape({1, 1, region.size(0), region.size(1)}),
                                            F::AdaptiveAvgPool2dFuncOptions({g, g}))
                         .reshape({-1});                                            // [N] share of each patch
      auto feats = d.patch_features.to(torch::kFloat32).mean(0);                    // [N, D] mean over layers
      auto mean = (weights.unsqueeze(1) * feats).sum(0) / weights.sum().clamp_min(1e-12);
      auto sims = torch::matmul(s.keyword_embeddings.to(torch::kFloat32), F::normalize(mean, F::NormalizeFuncOptions().dim(0)));
      r.defect_type = s.apg->keywords[sims.argmax().item<int64_t>()];
    }
  }

  // The prompt of METHOD §1.9, one prefill for P(yes), then the answer from the same cache.
  reset_conversation();
  const auto q = question(options.question);
  auto segments = s.prompt({}, q);
  auto& last_segment = segments.back().ids;
  last_segment.insert(last_segment.end(), s.answer_prefix.begin(), s.answer_prefix.end());
  int64_t prompt_tokens = 0;
  for (const auto& seg : segments) prompt_tokens += seg.length();
  const int64_t room = answer_room(prompt_tokens, s.cache.capacity(), "the first question (image tokens + question)");
  r.prompt_tokens = prompt_tokens;
  const auto t_prefill = Clock::now();
  const auto probs = options.prefill
                         ? llm::candidate_probs(options.prefill(s.cache, llm::embed_segments(s.llm, segments)), s.yes_no)
                         : llm::first_token_probs(s.llm, s.cache, segments, s.yes_no);
  r.timings.prefill = seconds_since(t_prefill);
  // P(Yes) of the two decision tokens, moved by the bundle's calibration (log-odds).
  const auto bias_it = s.bundle.decision_bias.find(s.class_name);
  const double bias = bias_it == s.bundle.decision_bias.end() ? 0.0 : bias_it->second;
  r.log_odds = probs.logits[0] - probs.logits[1] + bias;
  r.p_yes = 1.0 / (1.0 + std::exp(-r.log_odds));
  s.prefix_length = 0;
  for (size_t i = 0; i + 1 < segments.size(); ++i) s.prefix_length += segments[i].length();
  const auto& last_ids = segments.back().ids;  // the conversation tokens (ends with "### Assistant:")
  s.prefix_ids = last_ids;

  if (options.generate) {
    // Roll back the last prompt token and feed it again: its logits start the generation.
    s.cache.truncate(s.cache.pos - 1);
    s.prefix_ids.pop_back();
    auto gen = generate_options(options);
    gen.max_tokens = std::min(gen.max_tokens, room);
    if (bias != 0)
      gen.first_token_bias = {{s.yes_no[0], static_cast<float>(0.5 * bias)}, {s.yes_no[1], static_cast<float>(-0.5 * bias)}};
    const auto t_gen = Clock::now();
    std::vector<llm::Segment> tail{llm::Segment::tokens({last_ids.back()})};
    auto out = s.generate(tail, gen);
    r.timings.generate = seconds_since(t_gen);
    r.generated_tokens = static_cast<int64_t>(out.tokens.size());
    r.stop_reason = out.stop_reason;
    s.prefix_ids.push_back(last_ids.back());
    if (!out.tokens.empty()) s.prefix_ids.insert(s.prefix_ids.end(), out.tokens.begin(), out.tokens.end() - 1);
    r.answer = llm::clean_answer(s.tokenizer->decode(s.answer_prefix) + out.text);
    // The decision is the answer's first token when it is Yes or No, else the fast decision.
    if (!out.tokens.empty() && (out.tokens[0] == s.yes_no[0] || out.tokens[0] == s.yes_no[1]))
      r.anomalous = out.tokens[0] == s.yes_no[0];
    else
      r.anomalous = r.p_yes > 0.5;
  } else {
    r.anomalous = r.p_yes > 0.5;
    r.answer = map_answer(r.regions, r.anomalous, r.defect_type);
  }
  s.history.push_back({q, r.answer});
  return r;
}

std::string IadGpt::ask(std::string_view message, const InspectOptions& options) {
  return reply(message, options).text;
}

void IadGpt::set_history(std::vector<llm::Turn> turns) {
  auto& s = *state_;
  if (!s.have_image) throw InputError("no image to talk about: inspect an image first");
  s.history = std::move(turns);  // reply() keeps the cache's longest common prefix with the new prompt
}

Reply IadGpt::reply(std::string_view message, const InspectOptions& options) {
  auto& s = *state_;
  if (!s.have_image) throw InputError("no image to talk about: inspect an image first");
  auto segments = s.prompt(s.history, message);
  auto ids = segments.back().ids;
  const int64_t room = answer_room(s.prefix_length + static_cast<int64_t>(ids.size()), s.cache.capacity(),
                                   "the conversation");
  // Reuse the cache for the longest common prefix of what it holds and the new conversation
  // tokens (the image prefix never changes); keep one token to feed for the answer's logits.
  size_t n = 0;
  while (n < s.prefix_ids.size() && n + 1 < ids.size() && s.prefix_ids[n] == ids[n]) ++n;
  s.cache.truncate(s.prefix_length + static_cast<int64_t>(n));
  s.prefix_ids.resize(n);
  std::vector<int64_t> fresh(ids.begin() + static_cast<std::ptrdiff_t>(n), ids.end());
  auto gen = generate_options(options);
  gen.max_tokens = std::min(gen.max_tokens, room);
  std::vector<llm::Segment> tail{llm::Segment::tokens(fresh)};
  auto out = s.generate(tail, gen);
  s.prefix_ids.insert(s.prefix_ids.end(), fresh.begin(), fresh.end());
  if (!out.tokens.empty()) s.prefix_ids.insert(s.prefix_ids.end(), out.tokens.begin(), out.tokens.end() - 1);
  Reply r;
  r.text = llm::clean_answer(out.text);
  r.stop_reason = out.stop_reason;
  r.prompt_tokens = s.prefix_length + static_cast<int64_t>(ids.size());
  r.generated_tokens = static_cast<int64_t>(out.tokens.size());
  s.history.push_back({std::string(message), r.text});
  return r;
}

}  // namespace iadgpt::model
