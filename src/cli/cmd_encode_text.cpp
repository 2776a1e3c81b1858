// `iadgpt encode-text`: texts (or given token ids) -> CLIP-family text tower -> safetensors with
// token_ids [n,77] I64, embedding [n,D] (L2-normalised), embedding_raw [n,D] (the family's own
// forward output). See docs/ARCHITECTURE.md (CLI contract) and src/text/README.md.
#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli/commands.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "text/clip_tokenizer.h"
#include "text/text_tower.h"

namespace iadgpt::cli {
namespace {

struct EncodeTextArgs {
  std::string model, config, vocab, file, out, token_ids, key = "input_ids";
  std::vector<std::string> texts;
  std::string dtype = "f32";
  std::string truncate = "upstream";
};

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw InputError(fmt::format("{}: cannot open the config", path));
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("{}: invalid JSON ({})", path, e.what()));
  }
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(fmt::format("{}: cannot open the text file", path));
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) lines.push_back(line);  // blank lines separate nothing: skipped
  }
  if (lines.empty()) throw InputError(fmt::format("{}: no text lines", path));
  return lines;
}

text::Truncation parse_truncation(const std::string& s) {
  if (s == "upstream") return text::Truncation::Upstream;
  if (s == "anomalygpt") return text::Truncation::AnomalyGpt;
  if (s == "error") return text::Truncation::Error;
  throw InputError(fmt::format("--truncate must be upstream, anomalygpt or error, not '{}'", s));
}

torch::Tensor read_token_ids(const std::string& file, const std::string& key) {
  const auto tensors = io::load_safetensors(file);
  auto it = tensors.find(key);
  if (it == tensors.end()) throw InputError(fmt::format("{}: no tensor '{}'", file, key));
  if (it->second.dim() != 2 || it->second.is_floating_point())
    throw InputError(fmt::format("{}: tensor '{}' must be integer token ids [n, L]", file, key));
  return it->second.to(torch::kInt64).contiguous();
}

void run(const EncodeTextArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  text::TextLoadOptions options;
  options.dtype = a.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  if (!a.config.empty()) options.config = read_json_file(a.config);
  const auto tower = text::load_text_tower(a.model, options);

  torch::Tensor ids;
  if (!a.token_ids.empty()) {
    ids = read_token_ids(a.token_ids, a.key);
  } else {
    const std::vector<std::string> texts = a.file.empty() ? a.texts : read_lines(a.file);
    if (texts.empty()) throw InputError("give texts with --text or --file (or ids with --token-ids)");
    std::filesystem::path vocab = a.vocab;
    if (vocab.empty()) vocab = text::ClipTokenizer::find_beside(a.model);
    if (vocab.empty())
      throw InputError(fmt::format(
          "no CLIP BPE vocabulary beside {}; pass --vocab bpe_simple_vocab_16e6.txt.gz (or a "
          "directory with vocab.json + merges.txt)", a.model));
    const auto tok = text::ClipTokenizer::load(vocab);
    if (tok.vocab_size() > tower.config.vocab_size)
      throw InputError(fmt::format(
          "{}: the text tower has {} token ids but the vocabulary {} has {}; feed ids with "
          "--token-ids FILE --key NAME", a.model, tower.config.vocab_size, vocab.string(),
          tok.vocab_size()));
    ids = tok.tokenize_batch(texts, parse_truncation(a.truncate), tower.config.context_length);
  }
  const auto t1 = std::chrono::steady_clock::now();
  const auto out = text::encode_text(tower, ids);
  const auto t2 = std::chrono::steady_clock::now();
  io::save_safetensors(a.out, {{"token_ids", ids},
                               {"embedding", out.embedding.contiguous()},
                               {"embedding_raw", out.embedding_raw.contiguous()}},
                       {{"family", std::string(text::family_name(tower.config.family))}});
  using ms = std::chrono::duration<double, std::milli>;
  std::cerr << fmt::format("encode-text: {} texts, {} family, load {:.0f} ms, encode {:.1f} ms "
                           "({:.2f} ms/text)\n",
                           ids.size(0), text::family_name(tower.config.family), ms(t1 - t0).count(),
                           ms(t2 - t1).count(), ms(t2 - t1).count() / ids.size(0));
}

}  // namespace

void add_encode_text(CLI::App& app) {
  auto a = std::make_shared<EncodeTextArgs>();
  auto* cmd = app.add_subcommand("encode-text", "Encode texts with a CLIP-family text tower");
  cmd->add_option("--model", a->model, "Checkpoint (ImageBind, OpenAI/OpenCLIP CLIP, HF CLIP)")
      ->required();
  cmd->add_option("--config", a->config,
                  "JSON config for what shapes cannot tell (heads, OpenCLIP activation)");
  cmd->add_option("--vocab", a->vocab,
                  "CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz or a dir with vocab.json + "
                  "merges.txt); default: beside the checkpoint");
  auto* text_opt = cmd->add_option("--text", a->texts, "Text(s) to encode");
  auto* file_opt = cmd->add_option("--file", a->file, "File with one text per line");
  auto* ids_opt = cmd->add_option("--token-ids", a->token_ids,
                                  "safetensors file with token ids [n,L] to encode instead of texts");
  cmd->add_option("--key", a->key, "Tensor name inside --token-ids")->capture_default_str();
  text_opt->excludes(file_opt);
  ids_opt->excludes(text_opt)->excludes(file_opt);
  cmd->add_option("--out", a->out, "Output safetensors")->required();
  cmd->add_option("--dtype", a->dtype, "Compute dtype")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  cmd->add_option("--truncate", a->truncate,
                  "Texts over 75 BPE tokens: upstream ([SOT]+75+[EOT]), anomalygpt (first 77, no "
                  "EOT) or error")
      ->check(CLI::IsMember({"upstream", "anomalygpt", "error"}))
      ->capture_default_str();
  cmd->callback([a] { run(*a); });
}

}  // namespace iadgpt::cli
