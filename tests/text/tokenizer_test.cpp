// The CLIP BPE tokenizer against ids computed by upstream openai/CLIP (clip.tokenize) and by
// ImageBind's copy. Ids are exact: any difference is a bug, so no tolerance.
#include <gtest/gtest.h>

#include <zlib.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/shared.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "text/clip_tokenizer.h"
#include "text/unicode.h"

namespace {

using iadgpt::text::ClipTokenizer;
using iadgpt::text::Truncation;

const std::filesystem::path kVocab =
    iadgpt::test::data("tokenizers/openai_clip/bpe_simple_vocab_16e6.txt.gz");

const ClipTokenizer& tokenizer() {
  static ClipTokenizer tok = ClipTokenizer::load(kVocab);
  return tok;
}

nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  if (!in) throw std::runtime_error("missing fixture " + p.string());
  return nlohmann::json::parse(in);
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

TEST(ClipTokenizer, VocabularyHasUpstreamSizeAndSpecials) {
  const auto& tok = tokenizer();
  EXPECT_EQ(tok.vocab_size(), 49408);
  EXPECT_EQ(tok.sot_id(), 49406);
  EXPECT_EQ(tok.eot_id(), 49407);
}

TEST(ClipTokenizer, MatchesUpstreamOnEveryReferenceCase) {
  const auto ref = read_json(iadgpt::test::data("tokenizers/openai_clip/clip_tokenizer_reference.json"));
  ASSERT_EQ(ref["cases"].size(), 78u);
  int checked = 0;
  for (const auto& c : ref["cases"]) {
    const std::string text = from_hex(c["utf8_hex"].get<std::string>());
    ASSERT_EQ(text, c["text"].get<std::string>());
    SCOPED_TRACE("case: " + c["group"].get<std::string>() + " '" + text + "'");
    const auto pieces = tokenizer().encode_pieces(text);
    EXPECT_EQ(pieces, c["bpe_tokens"].get<std::vector<std::string>>());
    EXPECT_EQ(tokenizer().encode(text), c["bpe_ids"].get<std::vector<int64_t>>());
    const auto row = tokenizer().tokenize(text, Truncation::Upstream);
    EXPECT_EQ(row, c["ids"].get<std::vector<int64_t>>());
    const auto eot = std::max_element(row.begin(), row.end()) - row.begin();
    EXPECT_EQ(eot, c["eot_position"].get<int64_t>());
    if (c["truncated"].get<bool>()) {
      EXPECT_THROW(tokenizer().tokenize(text, Truncation::Error), iadgpt::InputError);
    }
    ++checked;
  }
  EXPECT_EQ(checked, 78);
}

TEST(ClipTokenizer, MatchesImageBindAndOpenAiFixtureIds) {
  // The fixtures' reference.json carry the same id matrices as their reference.safetensors.
  const auto ib = read_json(iadgpt::test::fixture("imagebind_tiny/reference.json"));
  const auto oc = read_json(iadgpt::test::fixture("openai_clip_tiny/reference.json"));
  const auto prompts = ib["prompts"].get<std::vector<std::string>>();
  ASSERT_EQ(prompts.size(), 8u);
  const auto expect_ib = ib["text_input_ids"].get<std::vector<std::vector<int64_t>>>();
  const auto expect_oc = oc["clip_tokenize_ids"].get<std::vector<std::vector<int64_t>>>();
  for (std::size_t n = 0; n < prompts.size(); ++n) {
    const auto row = tokenizer().tokenize(prompts[n]);
    EXPECT_EQ(row, expect_ib[n]) << prompts[n];
    EXPECT_EQ(row, expect_oc[n]) << prompts[n];
  }
  const auto batch = tokenizer().tokenize_batch(prompts);
  ASSERT_EQ(batch.sizes(), (std::vector<int64_t>{8, 77}));
  EXPECT_EQ(batch[7][76].item<int64_t>(), 49407);
  // And the tensors the towers are tested with (reference.safetensors).
  const auto ib_ref = iadgpt::io::load_safetensors(iadgpt::test::fixture("imagebind_tiny/reference.safetensors"));
  const auto oc_ref = iadgpt::io::load_safetensors(iadgpt::test::fixture("openai_clip_tiny/reference.safetensors"));
  EXPECT_TRUE(torch::equal(batch, ib_ref.at("text_input_ids")));
  EXPECT_TRUE(torch::equal(batch, oc_ref.at("clip_tokenize_ids").to(torch::kInt64)));
}

TEST(ClipTokenizer, AnomalyGptTruncationDropsTheEot) {
  // AnomalyGPT's vendored copy keeps the first 77 of [SOT]+tokens+[EOT] (imagebind_tiny README,
  // verification.json "anomalygpt_copy"): no EOT on a long text.
  const auto v = read_json(iadgpt::test::fixture("imagebind_tiny/verification.json"));
  const auto prompts = read_json(iadgpt::test::fixture("imagebind_tiny/reference.json"))["prompts"];
  const auto row = tokenizer().tokenize(prompts[7].get<std::string>(), Truncation::AnomalyGpt);
  EXPECT_EQ(row, v["anomalygpt_copy"]["anomalygpt_ids_for_differing_rows"]["7"]
                     .get<std::vector<int64_t>>());
  EXPECT_EQ(std::count(row.begin(), row.end(), 49407), 0);
  const auto up = tokenizer().tokenize(prompts[7].get<std::string>(), Truncation::Upstream);
  EXPECT_TRUE(std::equal(row.begin(), row.end() - 1, up.begin()));
  EXPECT_EQ(up.back(), 49407);
}

TEST(ClipTokenizer, HtmlUnescapeFollowsPython) {
  using iadgpt::text::html_unescape;
  using iadgpt::text::utf8_decode;
  using iadgpt::text::utf8_encode;
  auto un = [](const char* s) { return utf8_encode(html_unescape(utf8_decode(s))); };
  EXPECT_EQ(un("fish &amp; chips"), "fish & chips");
  EXPECT_EQ(un("&ampx &notit; &#x41;&#66 &#0; &#128; &#xD800; &#1;"),
            "&x \xc2\xacit; AB \xef\xbf\xbd \xe2\x82\xac \xef\xbf\xbd ");
  EXPECT_EQ(un("&unknown; & &# &#x;"), "&unknown; & &# &#x;");
}

TEST(ClipTokenizer, LowerFollowsPython) {
  using iadgpt::text::python_lower;
  using iadgpt::text::utf8_decode;
  using iadgpt::text::utf8_encode;
  auto low = [](const char* s) { return utf8_encode(python_lower(utf8_decode(s))); };
  EXPECT_EQ(low("\xc4\xb0"), "i\xcc\x87");                  // İ -> i + U+0307
  EXPECT_EQ(low("\xce\xa3\xce\x91\xce\xa3"), "\xcf\x83\xce\xb1\xcf\x82");  // ΣΑΣ -> σας
  EXPECT_EQ(low("\xc3\x89\xd0\x9f\xc3\x9f"), "\xc3\xa9\xd0\xbf\xc3\x9f");  // ÉПß -> éпß
}

TEST(ClipTokenizer, HuggingFaceFilesGiveTheSameIds) {
  // vocab.json + merges.txt laid out as HF's CLIPTokenizer ships them, derived from the .gz.
  const auto dir = iadgpt::test::scratch("text-hf-vocab");
  std::string text;
  {
    gzFile f = gzopen(kVocab.c_str(), "rb");
    ASSERT_NE(f, nullptr);
    char buf[1 << 16];
    int n;
    while ((n = gzread(f, buf, sizeof buf)) > 0) text.append(buf, n);
    gzclose(f);
  }
  std::ofstream merges(dir / "merges.txt", std::ios::binary);
  merges << "#version: 0.2\n";
  std::size_t pos = text.find('\n') + 1;
  for (int i = 0; i < 48894; ++i) {
    const std::size_t nl = text.find('\n', pos);
    merges << text.substr(pos, nl - pos) << "\n";
    pos = nl + 1;
  }
  merges.close();
  nlohmann::json vocab = nlohmann::json::object();
  const auto strings = tokenizer().vocabulary();
  ASSERT_EQ(strings.size(), 49408u);
  for (std::size_t id = 0; id < strings.size(); ++id) vocab[strings[id]] = id;
  std::ofstream(dir / "vocab.json") << vocab.dump();

  const auto hf = ClipTokenizer::load(dir);
  EXPECT_EQ(hf.vocab_size(), 49408);
  for (const char* t : {"a photo of a damaged screw.", "caf\xc3\xa9 cr\xc3\xa8me", "it's 3.5mm"})
    EXPECT_EQ(hf.tokenize(t), tokenizer().tokenize(t)) << t;
  EXPECT_EQ(ClipTokenizer::find_beside(dir / "model.safetensors"), dir);
}

TEST(ClipTokenizer, MissingOrBrokenVocabularyIsAnInputError) {
  EXPECT_THROW(ClipTokenizer::load("/nonexistent/bpe.txt.gz"), iadgpt::InputError);
  const auto dir = iadgpt::test::scratch("text-bad-vocab");
  { std::ofstream(dir / "bad.txt") << "#version\nnot-a-merge-line\n"; }
  EXPECT_THROW(ClipTokenizer::load(dir / "bad.txt"), iadgpt::InputError);
  EXPECT_THROW(ClipTokenizer::load(dir), iadgpt::InputError);
  EXPECT_THROW(tokenizer().tokenize("\xff invalid"), iadgpt::InputError);
}

}  // namespace

namespace {

TEST(ClipTokenizer, PreTokenizerFollowsRegexIgnoreCaseSemantics) {
  // Under IGNORECASE, [^\s\p{L}\p{N}] does not match U+0345 (its case partner U+03B9 is a
  // letter) and [\p{L}]+ does not either: regex.findall skips it like whitespace.
  EXPECT_EQ(tokenizer().encode("x\xcd\x85y"), tokenizer().encode("x y"));
  // IGNORECASE folds long s onto 's': "'ſ" is the contraction piece (ſ is lowercase already).
  EXPECT_EQ(tokenizer().encode("a'\xc5\xbf"), tokenizer().encode("a '\xc5\xbf"));
  EXPECT_NE(tokenizer().encode("a'\xc5\xbf"), tokenizer().encode("a' \xc5\xbf"));
  // Special-token text is recognised after lower-casing, at any position.
  EXPECT_EQ(tokenizer().encode("<|ENDOFTEXT|>x"), (std::vector<int64_t>{49407, tokenizer().encode("x")[0]}));
}

}  // namespace
