// The IAD-GPT pipeline with the tiny fixtures and random adapters: the prompt layout of METHOD
// §1.9 rebuilt by hand, the fast decision vs the generated answer, answers from constructed maps,
// multi-turn chat through the KV cache, and the differentiable heads.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <fstream>
#include <map>

#include "anomaly/apg.h"
#include "anomaly/detector.h"
#include "common/method_reference.h"
#include "image/decode.h"
#include "image/preprocess.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "llm/generate.h"
#include "model/class_prompts.h"
#include "model/pipeline.h"
#include "model/prompt.h"
#include "model/tiny_bundle.h"
#include "vision/loader.h"

using namespace iadgpt;
namespace fs = std::filesystem;

namespace {

cv::Mat fixture_image(const std::string& name) { return image::decode_file(test::fixture("imagebind_tiny/images/" + name)); }
cv::Mat grid_image(const std::string& name) { return image::decode_file(test::data("mvtec_ad/grid/train/good/" + name)); }

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// The tiny bundle with an LLM of `context` positions: llama_tiny's weights under a copy of its
// config (RoPE does not depend on the weights, so the model is the same, only its context differs).
model::Bundle bundle_with_context(const std::string& name, int64_t context, uint64_t seed = 2) {
  auto bundle = test::tiny_bundle(name, seed);
  const auto llm_dir = test::scratch(name) / "llm";
  fs::create_directories(llm_dir);
  auto config = test::read_json_file(test::fixture("llama_tiny/config.json"));
  config["max_position_embeddings"] = context;
  std::ofstream(llm_dir / "config.json") << config.dump(2);
  fs::remove(llm_dir / "model.safetensors");
  fs::create_symlink(test::fixture("llama_tiny/model.safetensors"), llm_dir / "model.safetensors");
  bundle.llm = llm_dir;
  return bundle;
}

int64_t prompt_length(const std::vector<llm::Segment>& segments) {
  int64_t n = 0;
  for (const auto& s : segments) n += s.length();
  return n;
}

// The prompt the next ask(question) will prefill, rebuilt from the history as ask does.
int64_t next_prompt_length(const model::IadGpt& m, std::string_view question) {
  const auto& t = m.image_tokens();
  return prompt_length(model::anomalygpt_prompt(m.tokenizer(), t.image_token, t.expert_tokens[0], m.history(), question));
}

}  // namespace

TEST(ClassQuestion, BottleIsTheMethodExampleAndKeywordsReplaceTheList) {
  EXPECT_EQ(model::class_description("bottle", {}),
            "This is a photo of a bottle for anomaly detection, which should be round, without any damage, "
            "flaw, defect, scratch, hole or broken part.");
  const std::vector<std::string> kw = {"crack", "scratch", "contamination"};
  EXPECT_EQ(model::class_description("bottle", kw),
            "This is a photo of a bottle for anomaly detection, which should be round, without any crack, "
            "scratch or contamination.");
  EXPECT_NE(model::class_description("widget", {}).find("a photo of a widget"), std::string::npos);
  EXPECT_NE(model::class_description("metal_nut", {}).find("a metal nut"), std::string::npos);
  EXPECT_NE(model::class_description("pipe_fryum", {}).find("a pipe fryum"), std::string::npos);
}

TEST(MapAnswer, OneRegionInEachOfTheNineCells) {
  const auto& names = anomaly::cell_names();
  for (int cell = 0; cell < 9; ++cell) {
    const int row = cell / 3, col = cell % 3;
    auto map = torch::zeros({300, 300});
    map.slice(0, row * 100 + 40, row * 100 + 60).slice(1, col * 100 + 30, col * 100 + 70).fill_(0.9);
    const auto regions = anomaly::find_regions(map, 0.5);
    ASSERT_EQ(regions.size(), 1u);
    EXPECT_EQ(model::position_words(regions), names[cell]);
    EXPECT_EQ(model::map_answer(regions, true),
              "Yes, there is an anomaly in the image, at the " + names[cell] + " of the image.");
  }
}

TEST(MapAnswer, TwoRegionsNoRegionAndDefectType) {
  auto map = torch::zeros({90, 120});
  map.slice(0, 2, 20).slice(1, 2, 30).fill_(1.0);     // top left, the larger one
  map.slice(0, 70, 85).slice(1, 95, 110).fill_(0.8);  // bottom right
  const auto regions = anomaly::find_regions(map, 0.5);
  ASSERT_EQ(regions.size(), 2u);
  EXPECT_EQ(model::position_words(regions), "top left and bottom right");
  EXPECT_EQ(model::map_answer(regions, true),
            "Yes, there are 2 anomalies in the image, they are at the top left and bottom right of the image.");
  EXPECT_EQ(model::map_answer(regions, true, "crack"),
            "Yes, there are 2 anomalies in the image, they are at the top left and bottom right of the image, it looks "
            "like a crack.");
  EXPECT_EQ(model::map_answer(regions, false), "No, there is no anomaly in the image.");
  EXPECT_EQ(model::map_answer({}, true), "Yes, there is an anomaly in the image.");
}

// The acceptance test of METHOD §1.9: the logits of the pipeline's prompt equal those of a sequence
// assembled by hand from token embeddings and the adapters' outputs recomputed here by METHOD §1.4, §1.7
// and §1.8 in plain tensor ops (tests/common/method_reference.h), not by the modules.
TEST(IadGptPipeline, InjectedSequenceIsTheMethodLayout) {
  const auto bundle = test::tiny_bundle("pipe-layout", 3);
  {
    // He-scaled MMF convs and O(0.1) biases: with torch's default init the activations shrink
    // ~2.5× per stage and the expert tokens would hardly depend on the masks, hiding an MMF defect.
    io::TensorMap mmf;
    auto gen = at::detail::createCPUGenerator(7);
    for (const auto& [key, t] : io::load_safetensors(*bundle.mmf)) {
      const bool weight = key.find("weight") != std::string::npos;
      const double stddev = weight ? std::sqrt(2.0 / static_cast<double>(t[0].numel())) : 0.1;
      mmf[key] = key == "base_tokens" ? t.clone() : torch::randn(t.sizes(), gen) * stddev;
    }
    io::save_safetensors(*bundle.mmf, mmf);
  }
  model::IadGpt m(bundle);
  m.set_class("bottle");
  const auto img = fixture_image("coffee.png");  // 320 x 213: encoder view (crop) differs from the map view
  model::InspectOptions opt;
  opt.generate = false;
  const auto r = m.inspect(img, opt);
  EXPECT_GE(r.p_yes, 0.0);
  EXPECT_LE(r.p_yes, 1.0);

  // e from the encoder view, taps from the map view, F_text of "bottle" — by the lower modules directly.
  torch::NoGradGuard no_grad;
  vision::VisionOptions vopt;
  vopt.config = bundle.vision_config;
  const auto tower = vision::load_vision(io::load_checkpoint(bundle.vision), vopt);
  const auto taps_ids = tower.config.default_taps();
  auto e = vision::vit_forward(tower.weights, tower.config, image::clip_encoder_view(img, 224).unsqueeze(0), taps_ids).embedding;
  auto taps = vision::vit_forward(tower.weights, tower.config, image::clip_map_view(img, 224).unsqueeze(0), taps_ids).taps;
  anomaly::DetectorOptions dopt;
  dopt.vision = bundle.vision;
  dopt.config = bundle.vision_config;
  dopt.vocab = bundle.vocab;
  // The built-in APG prompts of "bottle": their sentences join the abnormal side (§1.3).
  const auto apg = anomaly::builtin_prompts("bottle");
  ASSERT_TRUE(apg);
  dopt.extra_abnormal = apg->sentences;
  anomaly::Detector text_side(dopt);
  text_side.set_class("bottle");
  const auto& text = text_side.text_features();

  // The adapters by METHOD §1.4, §1.7 and §1.8 in float64 plain tensor ops from the bundle's
  // tensors (tests/common/method_reference.h), not through the modules the pipeline runs.
  const auto decoder = io::load_safetensors(*bundle.decoder);
  std::vector<torch::Tensor> layer_maps;
  for (int64_t l = 0; l < 4; ++l)
    layer_maps.push_back(test::reference::text_map(test::reference::decoder_projection(decoder, l, taps[l]), text.f_text, 224)
                             .select(1, 1));
  const auto maps = torch::stack(layer_maps, 1);  // [1, 4, S, S]
  const auto masks = torch::cat({maps, maps.mean(1, true), torch::zeros_like(maps.slice(1, 0, 1))}, 1);
  const auto image_token = test::reference::text_guided_enhancer(io::load_safetensors(*bundle.tge), e, text.normal_sentences,
                                                                 text.abnormal_sentences, text.f_text)
                               .to(torch::kFloat32);
  const auto expert_tokens = test::reference::multi_mask_fusion(io::load_safetensors(*bundle.mmf), masks).to(torch::kFloat32);

  // fp32 pipeline vs float64 reference on the same inputs. The MMF input: maps are softmax
  // outputs of 100·cos logits (1e-7 cosine error → 1e-5); M_fs is zeros without references (§1.8).
  EXPECT_LT(max_abs_diff(m.image_tokens().masks, masks), 1e-4);
  EXPECT_EQ(m.image_tokens().masks.select(1, 5).abs().max().item<double>(), 0.0);
  // Tokens of O(1): fp32 sums of ≤ 4608 terms per conv output, ~1e-5 relative; 1e-4.
  EXPECT_LT(max_abs_diff(image_token, m.image_tokens().image_token), 1e-4);
  EXPECT_LT(max_abs_diff(expert_tokens, m.image_tokens().expert_tokens), 1e-4);

  const auto& tok = m.tokenizer();
  const auto& llm_model = m.llm();
  // AnomalyGPT's bottle description with the APG keywords as the list of what must not be there.
  std::string list;
  for (size_t i = 0; i < apg->keywords.size(); ++i)
    list += (i == 0 ? "" : i + 1 == apg->keywords.size() ? " or " : ", ") + apg->keywords[i];
  const std::string question = "This is a photo of a bottle for anomaly detection, which should be round, without any " +
                               list + ". Is there any anomaly in the image?";
  EXPECT_EQ(m.question(""), question);
  std::vector<int64_t> before{tok.bos_id()};
  for (auto id : tok.encode("### Human: <Img>")) before.push_back(id);
  auto rows = torch::cat({llm_model.embed(before), image_token, llm_model.embed(tok.encode("</Img> ")),
                          expert_tokens[0], llm_model.embed(tok.encode(question + "\n### Assistant:"))});
  llm::KvCache cache(llm_model, 256);
  auto expected = llm::forward(llm_model, cache, rows, llm::Logits::All);
  auto got = m.prompt_logits();
  ASSERT_EQ(got.sizes(), expected.sizes());
  // The adapters agree to ~1e-5 (above); the 2-layer LLM keeps that scale.
  EXPECT_LT(max_abs_diff(got, expected), 1e-4);
  // P(yes) is the softmax restricted to the Yes/No decision tokens, after the pieces both words
  // share (stories260K's tokenizer writes ▁ Y es / ▁ N o; LLaMA's has ▁Yes / ▁No, no shared piece).
  const auto yn = m.yes_no_tokens();
  auto last = expected[-1];
  if (!m.answer_prefix().empty()) last = llm::forward(llm_model, cache, llm_model.embed(m.answer_prefix()), llm::Logits::Last)[0];
  const double p_yes = torch::softmax(torch::stack({last[yn[0]], last[yn[1]]}), 0)[0].item<double>();
  EXPECT_NEAR(r.p_yes, p_yes, 1e-5);
}

// An LLM whose head can only say the Yes/No first tokens: the greedy first token is then the fast
// decision's argmax, and the test checks the pipeline gets the same answer both ways.
TEST(IadGptPipeline, FastDecisionAgreesWithTheFirstGeneratedToken) {
  int yes_count = 0, checked = 0;
  for (double sign : {1.0, -1.0}) {
  auto bundle = test::tiny_bundle("pipe-decision", 5);
  const auto llm_dir = test::scratch("pipe-decision") / (sign > 0 ? "llm-plus" : "llm-minus");
  fs::create_directories(llm_dir);
  fs::copy_file(test::fixture("llama_tiny/config.json"), llm_dir / "config.json", fs::copy_options::overwrite_existing);
  auto weights = io::load_safetensors(test::fixture("llama_tiny/model.safetensors"));
  const auto tok = llm::Tokenizer::from_path(*bundle.tokenizer);
  model::IadGpt probe(bundle);
  const int64_t yes = probe.yes_no_tokens()[0], no = probe.yes_no_tokens()[1];
  const auto prefix = probe.answer_prefix();
  // Every other row zero (logit 0); Yes = w, No = −w with w = (Yes − No) of the original head, so
  // one of the two is always ≥ 0 and wins, and which one depends on the image as before.
  auto head = weights.at("lm_head.weight").clone();
  auto w = sign * (head[yes] - head[no]);
  head.zero_();
  head[yes] = w;
  head[no] = -w;
  weights["lm_head.weight"] = head;
  io::save_safetensors(llm_dir / "model.safetensors", weights);
  bundle.llm = llm_dir;
  model::IadGpt m(bundle);
  m.set_class("grid");
  for (const auto& img : {grid_image("000.png"), grid_image("001.png"), fixture_image("astronaut.png"),
                          fixture_image("chelsea.png"), fixture_image("coffee.png")}) {
    model::InspectOptions opt;
    opt.max_tokens = 3;
    const auto r = m.inspect(img, opt);
    // The answer's decision piece (after the forced shared prefix) is Y.. or N...
    const auto yes_text = llm::clean_answer(tok.decode(std::vector<int64_t>{yes})), no_text = llm::clean_answer(tok.decode(std::vector<int64_t>{no}));
    const bool says_yes = r.answer.rfind(yes_text, 0) == 0;
    const bool says_no = r.answer.rfind(no_text, 0) == 0;
    ASSERT_TRUE(says_yes || says_no) << r.answer;
    EXPECT_EQ(says_yes, r.p_yes > 0.5) << "p_yes " << r.p_yes << " answer " << r.answer;
    EXPECT_EQ(r.anomalous, says_yes);
    yes_count += says_yes;
    ++checked;
  }
  }
  EXPECT_EQ(checked, 10);
  // Flipping the head's sign flips every decision, so both answers were exercised.
  EXPECT_EQ(yes_count, 5);
}

TEST(IadGptPipeline, GenerationIsDeterministicAndChatReusesTheCacheExactly) {
  auto bundle = test::tiny_bundle("pipe-chat", 2);
  // llama_tiny's 256 positions hold one turn with this byte-level tokenizer; RoPE does not depend
  // on the weights, so a copy of its config with 1024 positions runs the same model longer.
  const auto llm_dir = test::scratch("pipe-chat") / "llm";
  fs::create_directories(llm_dir);
  auto config = test::read_json_file(test::fixture("llama_tiny/config.json"));
  config["max_position_embeddings"] = 1024;
  std::ofstream(llm_dir / "config.json") << config.dump(2);
  fs::create_symlink(test::fixture("llama_tiny/model.safetensors"), llm_dir / "model.safetensors");
  bundle.llm = llm_dir;
  model::IadGpt m(bundle);
  m.set_class("grid");
  model::InspectOptions opt;
  opt.max_tokens = 12;
  const auto img = grid_image("000.png");
  const auto a = m.inspect(img, opt);
  const auto b = m.inspect(img, opt);
  EXPECT_EQ(a.answer, b.answer);
  EXPECT_DOUBLE_EQ(a.p_yes, b.p_yes);
  ASSERT_EQ(m.history().size(), 1u);
  EXPECT_GT(a.timings.encode, 0.0);
  EXPECT_GT(a.timings.prefill, 0.0);
  EXPECT_GT(a.timings.generate, 0.0);

  // Second turn through the cache == the same conversation prefilled from scratch.
  const auto history = m.history();
  std::string streamed;
  opt.on_text = [&](std::string_view s) { streamed += s; return true; };
  const auto answer = m.ask("Where is it?", opt);
  ASSERT_EQ(m.history().size(), 2u);
  EXPECT_EQ(llm::clean_answer(streamed), answer);
  const auto& tokens = m.image_tokens();
  auto segments = model::anomalygpt_prompt(m.tokenizer(), tokens.image_token, tokens.expert_tokens[0], history, "Where is it?");
  llm::KvCache cache(m.llm(), 1024);
  llm::GenerateOptions gen;
  gen.max_tokens = 12;
  gen.stop = {"###"};
  const auto fresh = llm::generate(m.llm(), m.tokenizer(), cache, segments, gen);
  EXPECT_EQ(llm::clean_answer(fresh.text), answer);
  // A third turn still works, and reset forgets the history.
  m.ask("Is it large?", opt);
  EXPECT_EQ(m.history().size(), 3u);
  m.reset_conversation();
  EXPECT_TRUE(m.history().empty());
}

// issue 13: `chat --max-tokens 512` on a 512-token model stopped after the first answer, because
// prompt + max_tokens was compared with the context. max_tokens is now clamped to the room left.
TEST(IadGptPipeline, AnswersAreCutAtTheRoomLeftAndOnlyAPromptThatDoesNotFitIsRefused) {
  constexpr int64_t kContext = 512;
  model::IadGpt m(bundle_with_context("pipe-room", kContext));
  m.set_class("grid");
  const auto img = grid_image("000.png");
  model::InspectOptions opt;
  opt.max_tokens = 4 * kContext;  // far above any room left, as chat's default 512 on this model
  // Turns 1-3: the reader stops each answer after its first words (a client closing the stream),
  // so the context keeps room for the next turn whatever the tiny model would go on to say.
  size_t streamed = 0;
  opt.on_text = [&](std::string_view s) { return (streamed += s.size()) < 12; };
  m.inspect(img, opt);
  for (const char* q : {"Where is it?", "Is it large?"}) {
    streamed = 0;
    const auto room = kContext - next_prompt_length(m, q);
    ASSERT_GT(room, 0) << q;
    ASSERT_LT(room, opt.max_tokens) << q;
    EXPECT_NO_THROW(m.ask(q, opt)) << q << " with max_tokens " << opt.max_tokens << " and " << room << " tokens left";
  }
  ASSERT_EQ(m.history().size(), 3u);

  // Turn 4, read to the end: the answer takes exactly the room left. The same turn from a fresh
  // cache of a larger context (same weights, greedy) with max_tokens = room gives the same answer,
  // and with room + 16 a longer one, so the cut is what ended it (not "###" or EOS).
  opt.on_text = nullptr;
  const auto history = m.history();
  const auto& t = m.image_tokens();
  const auto segments = model::anomalygpt_prompt(m.tokenizer(), t.image_token, t.expert_tokens[0], history, "Why?");
  const int64_t room = kContext - prompt_length(segments);
  ASSERT_GT(room, 0);
  const auto fourth = m.ask("Why?", opt);
  model::IadGpt wide(bundle_with_context("pipe-room-wide", 1024));
  llm::GenerateOptions gen;
  gen.stop = {"###"};
  auto fresh = [&](int64_t max_tokens) {
    llm::KvCache cache(wide.llm(), 1024);
    gen.max_tokens = max_tokens;
    return llm::generate(wide.llm(), wide.tokenizer(), cache, segments, gen);
  };
  const auto cut = fresh(room);
  EXPECT_EQ(llm::clean_answer(cut.text), fourth);
  EXPECT_EQ(static_cast<int64_t>(cut.tokens.size()), room);
  EXPECT_NE(llm::clean_answer(fresh(room + 16).text), fourth) << "the answer ended before the room did";

  // Turn 5 no longer fits at all: one clear error naming what the prompt needs and the context.
  const auto needs = next_prompt_length(m, "And now?");
  ASSERT_GE(needs, kContext);
  try {
    m.ask("And now?", opt);
    ADD_FAILURE() << "a prompt of " << needs << " tokens was accepted by a " << kContext << "-token context";
  } catch (const InputError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(fmt::format("needs {} tokens", needs)), std::string::npos) << what;
    EXPECT_NE(what.find(fmt::format("holds {} tokens", kContext)), std::string::npos) << what;
  }
  EXPECT_EQ(m.history().size(), 4u);  // the refused turn left the conversation as it was
}

// inspect: the first prompt (image tokens + class question) must leave one token for the answer;
// a context of exactly the prompt is refused by name, one more token answers with one token.
TEST(IadGptPipeline, InspectRefusesOnlyAFirstPromptThatLeavesNoRoom) {
  model::IadGpt probe(bundle_with_context("pipe-first", 512));
  probe.set_class("grid");
  const auto img = grid_image("000.png");
  probe.inspect(img, {});
  const auto& t = probe.image_tokens();
  const int64_t first = prompt_length(model::anomalygpt_prompt(probe.tokenizer(), t.image_token, t.expert_tokens[0], {},
                                                             probe.question(""))) +
                        static_cast<int64_t>(probe.answer_prefix().size());
  model::InspectOptions opt;
  opt.max_tokens = 64;
  {
    model::IadGpt m(bundle_with_context("pipe-first-full", first));
    m.set_class("grid");
    try {
      m.inspect(img, opt);
      ADD_FAILURE() << "a first prompt of " << first << " tokens was accepted by a " << first << "-token context";
    } catch (const InputError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(fmt::format("needs {} tokens", first)), std::string::npos) << what;
      EXPECT_NE(what.find(fmt::format("holds {} tokens", first)), std::string::npos) << what;
    }
  }
  model::IadGpt m(bundle_with_context("pipe-first-one", first + 1));
  m.set_class("grid");
  const auto r = m.inspect(img, opt);
  EXPECT_EQ(r.answer, probe.inspect(img, [] { model::InspectOptions o; o.max_tokens = 1; return o; }()).answer);
}

// The defect type (METHOD §1.10) by construction. A decoder with zero weights and bias k_j (the
// j-th APG keyword embedding) gives P_l = k_j at every patch, so the mean over the region is k_j and
// the type must be keyword j — for two different j. The LLM's decision is fixed by construction
// too (blocks' output projections zero, so the last hidden state is the last token's embedding,
// and the Yes/No rows of the head are ± that direction), so both answers are checked unconditionally.
TEST(IadGptPipeline, DefectTypeIsTheApgKeywordNearestTheRegionsPatchFeatures) {
  auto fields = test::tiny_bundle_fields("pipe-defect");
  model::init_random_adapters(fields, 6);
  // The map is the constant softmax of 100·cos(k_j, F_text): every pixel is one region.
  fields.threshold = 1e-6;
  const auto apg = anomaly::builtin_prompts("hazelnut");
  ASSERT_TRUE(apg);
  ASSERT_GE(apg->keywords.size(), 3u);
  anomaly::DetectorOptions dopt;
  dopt.vision = fields.vision;
  dopt.config = fields.vision_config;
  dopt.vocab = fields.vocab;
  anomaly::Detector text_side(dopt);
  const auto keywords = anomaly::keyword_embeddings(
      *apg, [&](const std::vector<std::string>& t) { return text_side.encode_text(t); });  // [K, D] normalised
  const int64_t K = keywords.size(0);

  model::write_bundle(fields, fields.dir);
  model::IadGpt probe(model::read_bundle(fields.dir));
  const int64_t yes = probe.yes_no_tokens()[0], no = probe.yes_no_tokens()[1];
  auto always = [&](bool says_yes) {
    const auto dir = test::scratch("pipe-defect") / (says_yes ? "llm-yes" : "llm-no");
    fs::create_directories(dir);
    fs::copy_file(test::fixture("llama_tiny/config.json"), dir / "config.json", fs::copy_options::overwrite_existing);
    io::TensorMap w;
    for (const auto& [k, t] : io::load_safetensors(test::fixture("llama_tiny/model.safetensors"))) w[k] = t.clone();
    for (int l = 0; l < 2; ++l)
      for (const auto* part : {"self_attn.o_proj", "mlp.down_proj"}) w.at(fmt::format("model.layers.{}.{}.weight", l, part)).zero_();
    auto& embed = w.at("model.embed_tokens.weight");
    const auto v = embed[yes].clone();
    embed.copy_(v.unsqueeze(0).expand_as(embed));  // every token: the same last hidden state v
    // logit(Yes) = ±100·(v/rms(v) ⊙ g)·(g ⊙ v) = ±100·Σ g²v²/rms(v): its sign is fixed.
    const auto dir_row = 100.0 * w.at("model.norm.weight") * v;
    w.at("lm_head.weight")[yes].copy_(says_yes ? dir_row : -dir_row);
    w.at("lm_head.weight")[no].copy_(says_yes ? -dir_row : dir_row);
    io::save_safetensors(dir / "model.safetensors", w);
    return dir;
  };
  const auto img = grid_image("000.png");
  for (const int64_t j : {int64_t{1}, K - 1}) {
    // Precondition of the construction: k_j is its own nearest keyword.
    ASSERT_EQ(torch::matmul(keywords, keywords[j]).argmax().item<int64_t>(), j);
    io::TensorMap decoder;
    for (int l = 0; l < 4; ++l) {
      decoder[fmt::format("fc.{}.weight", l)] = torch::zeros({32, 64});
      decoder[fmt::format("fc.{}.bias", l)] = keywords[j].to(torch::kFloat32).clone();
    }
    io::save_safetensors(*fields.decoder, decoder);
    for (const bool says_yes : {true, false}) {
      auto b = fields;
      b.llm = always(says_yes);
      model::write_bundle(b, b.dir);
      model::IadGpt m(model::read_bundle(b.dir));
      m.set_class("hazelnut");
      model::InspectOptions opt;
      opt.generate = false;
      const auto r = m.inspect(img, opt);
      ASSERT_GT(r.map.min().item<double>(), fields.threshold) << "the construction needs one region over the image";
      ASSERT_EQ(r.regions.size(), 1u);
      const auto& expected = apg->keywords[static_cast<size_t>(j)];
      EXPECT_EQ(r.defect_type, expected) << "keyword " << j;
      EXPECT_EQ(r.anomalous, says_yes) << "p_yes " << r.p_yes;
      if (says_yes)
        EXPECT_EQ(r.answer, "Yes, there is an anomaly in the image, at the center of the image, it looks like a " + expected + ".");
      else
        EXPECT_EQ(r.answer, "No, there is no anomaly in the image.");
      // Without the class (no APG) there is no type.
      m.set_class("");
      EXPECT_TRUE(m.inspect(img, opt).defect_type.empty());
    }
  }
}

TEST(IadGptPipeline, FewShotReferencesFillTheSixthMask) {
  auto fields = test::tiny_bundle_fields("pipe-fewshot");
  model::init_random_adapters(fields, 4);
  fields.mode = "few-shot";
  model::write_bundle(fields, fields.dir);
  model::IadGpt m(model::read_bundle(fields.dir));
  m.set_class("grid");
  model::InspectOptions opt;
  opt.generate = false;
  EXPECT_THROW(m.inspect(grid_image("000.png"), opt), InputError);  // few-shot needs references
  m.set_references({grid_image("001.png")});
  m.inspect(grid_image("000.png"), opt);
  EXPECT_GT(m.image_tokens().masks.select(1, 5).abs().max().item<double>(), 0.0);
}

// The bundle's `map`: "few-shot" draws and scores M_fs, and the MMF reads it alone (the layer maps
// and M_text zeros); "auto" feeds the decoder's maps too and draws the blend.
TEST(IadGptPipeline, BundleMapFewShotDrawsMfsAndTheMmfReadsItAlone) {
  auto fields = test::tiny_bundle_fields("pipe-map-fs");
  model::init_random_adapters(fields, 4);
  fields.mode = "few-shot";
  model::InspectOptions opt;
  opt.generate = false;
  const auto image = grid_image("000.png");
  std::map<std::string, model::Inspection> result;
  std::map<std::string, torch::Tensor> masks;
  for (const std::string map : {"few-shot", "auto"}) {
    fields.map = map;
    model::write_bundle(fields, fields.dir);
    model::IadGpt m(model::read_bundle(fields.dir));
    m.set_class("grid");
    m.set_references({grid_image("001.png")});
    result[map] = m.inspect(image, opt);
    masks[map] = m.image_tokens().masks[0].clone();
  }
  EXPECT_EQ(masks["few-shot"].narrow(0, 0, 5).abs().max().item<double>(), 0.0) << "M_l and M_text left out";
  EXPECT_GT(masks["auto"].narrow(0, 0, 5).abs().max().item<double>(), 0.0) << "the decoder's maps read";
  EXPECT_TRUE(torch::equal(masks["few-shot"][5], masks["auto"][5])) << "the same M_fs either way";
  const auto few_shot = masks["few-shot"][5];
  // Same float32 values, one max and one bilinear resize: only rounding of the resize differs.
  EXPECT_NEAR(result["few-shot"].score, few_shot.max().item<double>(), 1e-6);
  EXPECT_TRUE(torch::allclose(result["few-shot"].map.to(torch::kFloat32),
                              anomaly::resize_map(few_shot, image.rows, image.cols), 1e-5, 1e-6));
  EXPECT_GT(std::abs(result["few-shot"].score - result["auto"].score), 1e-4) << "auto draws the blend, not M_fs";
}

TEST(RunHeads, GradientsReachDecoderTgeAndMmf) {
  torch::manual_seed(0);
  model::Heads heads;
  heads.decoder = anomaly::VisualDecoder(16, 8, 4);
  heads.tge = model::TextGuidedEnhancer(8, 12);
  heads.mmf = model::MultiMaskFusion(12);
  std::vector<torch::Tensor> taps;
  for (int l = 0; l < 4; ++l) taps.push_back(torch::randn({2, 1 + 16, 16}));
  anomaly::TextFeatures text = anomaly::reduce_text_features(torch::randn({3, 8}), torch::randn({4, 8}));
  text.normal_sentences = torch::nn::functional::normalize(torch::randn({3, 8}), torch::nn::functional::NormalizeFuncOptions().dim(-1));
  text.abnormal_sentences = torch::nn::functional::normalize(torch::randn({4, 8}), torch::nn::functional::NormalizeFuncOptions().dim(-1));
  auto e = torch::nn::functional::normalize(torch::randn({2, 8}), torch::nn::functional::NormalizeFuncOptions().dim(-1));
  auto out = model::run_heads(heads, taps, e, torch::rand({2, 32, 32}), text, 32);
  ASSERT_EQ(out.layer_maps.sizes(), (std::vector<int64_t>{2, 4, 32, 32}));
  ASSERT_EQ(out.layer_probs.size(), 4u);
  ASSERT_EQ(out.layer_probs[0].sizes(), (std::vector<int64_t>{2, 2, 32, 32}));
  ASSERT_EQ(out.expert_tokens.sizes(), (std::vector<int64_t>{2, 18, 12}));
  ASSERT_EQ(out.image_token.sizes(), (std::vector<int64_t>{2, 12}));
  // The abnormal channel of each layer is what layer_maps holds; text_map is their mean.
  EXPECT_TRUE(torch::allclose(out.layer_maps.select(1, 2), out.layer_probs[2].select(1, 1)));
  EXPECT_TRUE(torch::allclose(out.text_map, out.layer_maps.mean(1), 1e-6, 1e-6));
  (out.expert_tokens.sum() + out.image_token.sum()).backward();
  EXPECT_TRUE(heads.decoder->fc[0]->as<torch::nn::Linear>()->weight.grad().defined());
  EXPECT_TRUE(heads.mmf->cell_proj->weight.grad().defined());
  EXPECT_TRUE(heads.tge->normal_path->weight.grad().defined());
}
