#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <set>

#include "anomaly/apg.h"
#include "common/run.h"
#include "common/shared.h"
#include "io/error.h"
#include "llm/model.h"

using namespace iadgpt;

namespace {

const std::vector<std::string> kMvtec = {"bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather",
                                         "metal_nut", "pill", "screw", "tile", "toothbrush", "transistor", "wood",
                                         "zipper"};
const std::vector<std::string> kVisa = {"candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
                                        "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum"};

void write_text(const std::filesystem::path& p, const std::string& s) { std::ofstream(p) << s; }

}  // namespace

TEST(Apg, BuiltinLibraryCoversEveryMvtecAndVisaClassWithValidEntries) {
  std::vector<std::string> all = kMvtec;
  all.insert(all.end(), kVisa.begin(), kVisa.end());
  EXPECT_EQ(anomaly::builtin_classes().size(), all.size());
  for (const auto& name : all) {
    auto p = anomaly::builtin_prompts(name);
    ASSERT_TRUE(p.has_value()) << name;
    EXPECT_GE(p->keywords.size(), 5u) << name;
    EXPECT_LE(p->keywords.size(), anomaly::kMaxKeywords) << name;
    ASSERT_EQ(p->keywords.size(), p->sentences.size()) << name;
    std::set<std::string> unique(p->keywords.begin(), p->keywords.end());
    EXPECT_EQ(unique.size(), p->keywords.size()) << name << ": duplicate keyword";
    for (const auto& k : p->keywords) {
      auto parsed = anomaly::parse_apg_reply(name, k + ": x y z").keywords;
      EXPECT_EQ(parsed, std::vector<std::string>{k}) << name << ": '" << k << "' is not a canonical keyword";
    }
    EXPECT_EQ(p->settings.value("source", ""), "builtin");
  }
  EXPECT_FALSE(anomaly::builtin_prompts("teapot").has_value());
}

TEST(Apg, ParserStripsNumberingBulletsAndEmphasisAndDropsJunk) {
  const std::string reply =
      "Here are the defects:\n"
      "1. Crack: a thin dark line splits the shell\n"
      "2) **Hole**: a small round hole\n"
      "- stain: a brown patch\n"
      "* crack: duplicate keyword, dropped\n"
      "no colon on this line\n"
      ": sentence without keyword\n"
      "dent:\n"
      "this keyword is far too long to be a keyword really: dropped\n"
      "\xE2\x80\xA2 Chip: a missing piece at the rim\n";
  auto p = anomaly::parse_apg_reply("bottle", reply);
  EXPECT_EQ(p.keywords, (std::vector<std::string>{"crack", "hole", "stain", "chip"}));
  EXPECT_EQ(p.sentences[1], "a small round hole");
  EXPECT_EQ(p.sentences[3], "a missing piece at the rim");
}

TEST(Apg, ParserKeepsAtMostTenKeywords) {
  std::string reply;
  for (int i = 0; i < 14; ++i) reply += "defect" + std::to_string(i) + ": looks bad number " + std::to_string(i) + "\n";
  auto p = anomaly::parse_apg_reply("tile", reply);
  EXPECT_EQ(p.keywords.size(), anomaly::kMaxKeywords);
  EXPECT_EQ(p.keywords.back(), "defect9");
}

TEST(Apg, PromptsFileRoundTripsAndFileEntriesOverrideTheLibrary) {
  auto dir = test::scratch("apg_roundtrip");
  auto path = dir / "prompts.json";
  anomaly::AbnormalPrompts mine{"hazelnut", {"mould"}, {"white fluffy mould grows on the shell"}, {{"source", "test"}}};
  anomaly::write_prompts_file(path, {{"hazelnut", mine}, {"bottle", *anomaly::builtin_prompts("bottle")}});
  auto back = anomaly::read_prompts_file(path);
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back.at("hazelnut").keywords, mine.keywords);
  EXPECT_EQ(back.at("hazelnut").sentences, mine.sentences);
  EXPECT_EQ(back.at("bottle").keywords, anomaly::builtin_prompts("bottle")->keywords);
  EXPECT_EQ(anomaly::prompts_for_class("hazelnut", path)->keywords, mine.keywords);
  EXPECT_EQ(anomaly::prompts_for_class("grid", path)->keywords, anomaly::builtin_prompts("grid")->keywords);
  EXPECT_EQ(anomaly::prompts_for_class("grid", std::nullopt)->keywords, anomaly::builtin_prompts("grid")->keywords);
}

TEST(Apg, BadPromptsFilesNameTheProblem) {
  auto dir = test::scratch("apg_bad");
  auto expect_error = [&](const std::string& body, const std::string& needle) {
    auto p = dir / "bad.json";
    write_text(p, body);
    try {
      anomaly::read_prompts_file(p);
      ADD_FAILURE() << "accepted: " << body;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("{not json", "not valid JSON");
  expect_error(R"({"format": "other", "version": 1, "classes": {}})", "not an APG prompts file");
  expect_error(R"({"format": "iadgpt-apg", "version": 2, "classes": {"a": {}}})", "version");
  expect_error(R"({"format": "iadgpt-apg", "version": 1, "classes": {}})", "classes");
  expect_error(R"({"format": "iadgpt-apg", "version": 1, "classes": {"a": {"keywords": ["x", "y"], "sentences": ["s"]}}})",
               "2 keywords but 1 sentences");
  expect_error(R"({"format": "iadgpt-apg", "version": 1, "classes": {"a": {"keywords": [3], "sentences": ["s"]}}})",
               "keywords");
  EXPECT_THROW(anomaly::read_prompts_file(dir / "missing.json"), InputError);
}

TEST(Apg, KeywordEmbeddingsAreOneNormalisedRowPerKeywordAndCached) {
  auto prompts = *anomaly::builtin_prompts("screw");
  int calls = 0;
  anomaly::SentenceEncoder encode = [&](const std::vector<std::string>& texts) {
    ++calls;
    auto rows = torch::zeros({static_cast<int64_t>(texts.size()), 8});
    for (size_t i = 0; i < texts.size(); ++i) rows[i][static_cast<int64_t>(i % 8)] = 3.0 + static_cast<double>(texts[i].size());
    return rows;
  };
  auto texts = anomaly::keyword_texts(prompts);
  ASSERT_EQ(texts.size(), prompts.keywords.size());
  EXPECT_NE(texts[0].find("screw with " + prompts.keywords[0]), std::string::npos) << texts[0];
  anomaly::PromptCache cache(test::scratch("apg_cache"));
  auto first = anomaly::keyword_embeddings(prompts, encode, &cache, "fake-model");
  const int after_first = calls;
  EXPECT_EQ(after_first, 1) << "the keyword texts are encoded once";
  auto second = anomaly::keyword_embeddings(prompts, encode, &cache, "fake-model");
  EXPECT_EQ(calls, after_first) << "second lookup must come from the cache";
  ASSERT_EQ(first.sizes(), (std::vector<int64_t>{static_cast<int64_t>(prompts.keywords.size()), 8}));
  EXPECT_TRUE(torch::allclose(first.norm(2, 1), torch::ones({first.size(0)}), 1e-6, 1e-6));
  EXPECT_TRUE(torch::equal(first, second));
}

TEST(Apg, ScriptHasTwoWorkedExamplesAndAsksForTheClass) {
  auto script = anomaly::apg_script("metal_nut");
  ASSERT_EQ(script.examples.size(), 2u);
  for (const auto& turn : script.examples) {
    auto parsed = anomaly::parse_apg_reply("x", turn.assistant);
    EXPECT_GE(parsed.keywords.size(), 6u) << "a worked example must itself parse to 6-10 keywords";
  }
  EXPECT_NE(script.request.find("metal nut"), std::string::npos);
}

TEST(Apg, ScriptLongerThanTheModelsContextIsAClearError) {
  // stories260K has 512 positions and a 512-piece vocabulary: the script does not fit.
  auto model = llm::load_model(test::fixture("stories260K"));
  auto tok = llm::Tokenizer::from_path(test::fixture("stories260K"));
  try {
    anomaly::generate_prompts(model, tok, "bottle", {.seed = 7});
    FAIL() << "a script longer than the context was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("context of only 512 positions"), std::string::npos) << e.what();
  }
}

TEST(ApgCli, BuiltinExportIsReadableAndUnknownClassExitsTwo) {
  auto dir = test::scratch("apg_cli");
  auto out = dir / "p.json";
  auto ok = test::run_iadgpt(std::vector<std::string>{"apg", "--builtin", "--class", "pcb1", "--class", "zipper", "--out", out.string()});
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  auto back = anomaly::read_prompts_file(out);
  EXPECT_EQ(back.size(), 2u);
  EXPECT_EQ(back.at("pcb1").keywords, anomaly::builtin_prompts("pcb1")->keywords);
  auto bad = test::run_iadgpt(std::vector<std::string>{"apg", "--builtin", "--class", "teapot", "--out", out.string()});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("no class 'teapot'"), std::string::npos) << bad.err;
  auto none = test::run_iadgpt(std::vector<std::string>{"apg", "--class", "pcb1", "--out", out.string()});
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_NE(none.err.find("exactly one of --llm DIR or --builtin"), std::string::npos) << none.err;
}
