// `iadgpt tokenize`: one JSON line per text with its token ids. CLIP BPE (the 77-slot padded row)
// with --vocab or a CLIP checkpoint's --model; SentencePiece (LLaMA tokenizer.model) via the llm
// module.
#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "io/error.h"
#include "llm/tokenizer.h"
#include "text/clip_tokenizer.h"

namespace iadgpt::cli {
namespace {

struct TokenizeArgs {
  std::string vocab, model, file;
  std::vector<std::string> texts;
  bool bos = false;
  std::string truncate = "upstream";
};

bool is_sentencepiece(const std::filesystem::path& p) {
  if (std::filesystem::is_directory(p)) return std::filesystem::is_regular_file(p / "tokenizer.model");
  return p.extension() == ".model";
}

void run(const TokenizeArgs& a) {
  std::vector<std::string> texts = a.texts;
  if (!a.file.empty()) {
    std::ifstream in(a.file, std::ios::binary);
    if (!in) throw InputError(fmt::format("{}: cannot open the text file", a.file));
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) texts.push_back(line);
    }
  }
  if (texts.empty()) throw InputError("give texts with --text or --file");

  std::filesystem::path vocab = a.vocab;
  if (vocab.empty()) {
    if (is_sentencepiece(a.model)) {
      // LLaMA-family SentencePiece: ids without BOS unless --bos (ARCHITECTURE.md contract).
      const auto tok = llm::Tokenizer::from_path(a.model);
      for (const auto& t : texts) {
        nlohmann::json line = {{"text", t}, {"ids", tok.encode(t, a.bos)}};
        std::cout << line.dump() << "\n";
      }
      return;
    }
    if (!std::filesystem::exists(a.model))
      throw InputError(fmt::format("{}: no such file or directory", a.model));
    vocab = text::ClipTokenizer::find_beside(a.model);
    if (vocab.empty())
      throw InputError(fmt::format(
          "no CLIP BPE vocabulary beside {}; pass --vocab bpe_simple_vocab_16e6.txt.gz (or a "
          "directory with vocab.json + merges.txt)", a.model));
  }
  if (a.bos) throw InputError("--bos applies to SentencePiece tokenizers (CLIP rows start with SOT)");
  const auto tok = text::ClipTokenizer::load(vocab);
  text::Truncation truncation = a.truncate == "anomalygpt" ? text::Truncation::AnomalyGpt
                                : a.truncate == "error"    ? text::Truncation::Error
                                                           : text::Truncation::Upstream;
  for (const auto& t : texts) {
    nlohmann::json line = {{"text", t}, {"ids", tok.tokenize(t, truncation)}};
    std::cout << line.dump() << "\n";
  }
}

}  // namespace

void add_tokenize(CLI::App& app) {
  auto a = std::make_shared<TokenizeArgs>();
  auto* cmd = app.add_subcommand("tokenize", "Print token ids (one JSON line per text)");
  auto* vocab = cmd->add_option("--vocab", a->vocab,
                                "CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz or a dir with "
                                "vocab.json + merges.txt)");
  auto* model = cmd->add_option("--model", a->model,
                                "A tokenizer.model / model directory (SentencePiece) or a CLIP "
                                "checkpoint with its vocabulary beside it");
  vocab->excludes(model);
  cmd->add_option("--text", a->texts, "Text(s) to tokenize");
  cmd->add_option("--file", a->file, "File with one text per line");
  cmd->add_flag("--bos", a->bos, "SentencePiece: prepend BOS");
  cmd->add_option("--truncate", a->truncate, "CLIP: upstream, anomalygpt or error")
      ->check(CLI::IsMember({"upstream", "anomalygpt", "error"}))
      ->capture_default_str();
  cmd->callback([a, vocab, model] {
    if (vocab->count() == 0 && model->count() == 0) throw InputError("give --vocab or --model");
    run(*a);
  });
}

}  // namespace iadgpt::cli
