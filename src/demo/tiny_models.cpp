#include "demo/tiny_models.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>

#include "anomaly/position.h"
#include "anomaly/prompts.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "llm/export.h"
#include "llm/tokenizer.h"
#include "llm/weights.h"
#include "vision/vit.h"

namespace iadgpt::demo {
namespace fs = std::filesystem;
namespace {

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  if (!f) throw std::runtime_error("cannot write " + path.string());
}

void write_json(const fs::path& path, const nlohmann::json& j) { write_text(path, j.dump(1) + "\n"); }

// Words as the CLIP pre-tokenizer sees them for our plain lower-case ASCII prompts: runs of letters,
// runs of digits, single punctuation marks.
std::vector<std::string> words(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  auto kind = [](unsigned char c) { return std::isalpha(c) ? 1 : std::isdigit(c) ? 2 : std::isspace(c) ? 0 : 3; };
  for (unsigned char c : text) {
    const int k = kind(c);
    if (!cur.empty() && (k != kind(static_cast<unsigned char>(cur.back())) || k == 3)) out.push_back(cur), cur.clear();
    if (k != 0) cur.push_back(static_cast<char>(std::tolower(c)));
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

struct Generator {
  torch::Generator gen;
  torch::Tensor randn(std::vector<int64_t> shape, double std = 0.02) {
    return torch::empty(shape, torch::kFloat32).normal_(0.0, std, gen);
  }
};

void put_block(io::TensorMap& t, const std::string& prefix, const nn::BlockWeights& b) {
  const auto qkv_w = b.qkv_weight.chunk(3, 0), qkv_b = b.qkv_bias.chunk(3, 0);
  const char* names[] = {"q", "k", "v"};
  for (int i = 0; i < 3; ++i) {
    t[fmt::format("{}self_attn.{}_proj.weight", prefix, names[i])] = qkv_w[i].contiguous();
    t[fmt::format("{}self_attn.{}_proj.bias", prefix, names[i])] = qkv_b[i].contiguous();
  }
  t[prefix + "self_attn.out_proj.weight"] = b.out_weight;
  t[prefix + "self_attn.out_proj.bias"] = b.out_bias;
  t[prefix + "layer_norm1.weight"] = b.ln1_weight;
  t[prefix + "layer_norm1.bias"] = b.ln1_bias;
  t[prefix + "layer_norm2.weight"] = b.ln2_weight;
  t[prefix + "layer_norm2.bias"] = b.ln2_bias;
  t[prefix + "mlp.fc1.weight"] = b.fc1_weight;
  t[prefix + "mlp.fc1.bias"] = b.fc1_bias;
  t[prefix + "mlp.fc2.weight"] = b.fc2_weight;
  t[prefix + "mlp.fc2.bias"] = b.fc2_bias;
}

nn::BlockWeights random_block(int64_t width, Generator& g) {
  nn::BlockWeights b;
  b.ln1_weight = torch::ones({width}), b.ln1_bias = torch::zeros({width});
  b.qkv_weight = g.randn({3 * width, width}), b.qkv_bias = torch::zeros({3 * width});
  b.out_weight = g.randn({width, width}), b.out_bias = torch::zeros({width});
  b.ln2_weight = torch::ones({width}), b.ln2_bias = torch::zeros({width});
  b.fc1_weight = g.randn({4 * width, width}), b.fc1_bias = torch::zeros({4 * width});
  b.fc2_weight = g.randn({width, 4 * width}), b.fc2_bias = torch::zeros({width});
  return b;
}

}  // namespace

std::vector<std::string> clip_corpus(const std::vector<std::string>& classes) {
  std::vector<std::string> out;
  auto all = classes;
  all.emplace_back("object");
  for (const auto& c : all)
    for (auto set : {anomaly::TemplateSet::AnomalyGpt}) {
      auto p = anomaly::build_prompts(c, set);
      out.insert(out.end(), p.normal.begin(), p.normal.end());
      out.insert(out.end(), p.abnormal.begin(), p.abnormal.end());
    }
  return out;
}

std::vector<std::string> learn_bpe_merges(const std::vector<std::string>& corpus, std::size_t min_merges) {
  // Word frequencies; each word is a symbol sequence whose last symbol carries "</w>".
  std::map<std::vector<std::string>, int64_t> vocab;
  for (const auto& line : corpus)
    for (const auto& w : words(line)) {
      std::vector<std::string> symbols;
      for (char c : w) symbols.emplace_back(1, c);
      symbols.back() += "</w>";
      ++vocab[symbols];
    }
  std::vector<std::string> merges;
  std::set<std::string> made;  // every symbol already in the vocabulary
  for (int c = 0; c < 256; ++c) made.insert(std::string(1, static_cast<char>(c))), made.insert(std::string(1, static_cast<char>(c)) + "</w>");
  for (;;) {
    std::map<std::pair<std::string, std::string>, int64_t> pairs;  // ordered: ties break by text
    for (const auto& [symbols, n] : vocab)
      for (std::size_t i = 0; i + 1 < symbols.size(); ++i) pairs[{symbols[i], symbols[i + 1]}] += n;
    auto best = pairs.end();
    for (auto it = pairs.begin(); it != pairs.end(); ++it)
      if (best == pairs.end() || it->second > best->second) best = it;
    if (best == pairs.end() || best->second < 2) break;
    const auto [a, b] = best->first;
    merges.push_back(a + " " + b);
    made.insert(a + b);
    std::map<std::vector<std::string>, int64_t> next;
    for (const auto& [symbols, n] : vocab) {
      std::vector<std::string> merged;
      for (std::size_t i = 0; i < symbols.size(); ++i) {
        if (i + 1 < symbols.size() && symbols[i] == a && symbols[i + 1] == b) merged.push_back(a + b), ++i;
        else merged.push_back(symbols[i]);
      }
      next[merged] += n;
    }
    vocab = std::move(next);
  }
  // Padding: letter pairs (never reached by our prompts once the learned merges apply first).
  for (char a = 'a'; a <= 'z' && merges.size() < min_merges; ++a)
    for (char b = 'a'; b <= 'z' && merges.size() < min_merges; ++b)
      for (const std::string end : {"", "</w>"}) {
        const std::string left(1, a), right = std::string(1, b) + end;
        if (made.insert(left + right).second && merges.size() < min_merges) merges.push_back(left + " " + right);
      }
  return merges;
}

fs::path write_tiny_clip(const fs::path& dir, const std::vector<std::string>& corpus, const TinyClipOptions& o) {
  fs::create_directories(dir);
  const auto merges = learn_bpe_merges(corpus);
  std::string vocab_text = "\"bpe_demo_vocab.txt\": CLIP BPE merges learned by iadgpt demo\n";
  for (const auto& m : merges) vocab_text += m + "\n";
  const fs::path vocab_path = dir / "bpe_demo_vocab.txt";
  write_text(vocab_path, vocab_text);
  const int64_t text_vocab = 512 + static_cast<int64_t>(merges.size()) + 2;  // bytes, bytes</w>, merges, SOT, EOT

  vision::VitConfig vc;
  vc.family = vision::Family::HfClip;
  vc.image_size = o.image_size, vc.patch_size = o.patch_size, vc.width = o.vision_width;
  vc.layers = o.vision_layers, vc.heads = o.vision_heads, vc.mlp_dim = 4 * o.vision_width, vc.embed_dim = o.embed_dim;
  auto vw = vision::random_weights(vc, torch::kFloat32, o.seed);
  io::TensorMap t;
  t["vision_model.embeddings.patch_embedding.weight"] = vw.patch_weight;
  t["vision_model.embeddings.class_embedding"] = vw.cls_token;
  t["vision_model.embeddings.position_embedding.weight"] = vw.pos_embed;
  t["vision_model.pre_layrnorm.weight"] = vw.pre_ln_weight;  // sic: upstream spelling
  t["vision_model.pre_layrnorm.bias"] = vw.pre_ln_bias;
  t["vision_model.post_layernorm.weight"] = vw.head_ln_weight;
  t["vision_model.post_layernorm.bias"] = vw.head_ln_bias;
  t["visual_projection.weight"] = vw.proj;
  for (int64_t l = 0; l < o.vision_layers; ++l)
    put_block(t, fmt::format("vision_model.encoder.layers.{}.", l), vw.blocks[static_cast<size_t>(l)]);

  Generator g{at::make_generator<at::CPUGeneratorImpl>(o.seed + 1)};
  const int64_t W = o.text_width;
  t["text_model.embeddings.token_embedding.weight"] = g.randn({text_vocab, W});
  t["text_model.embeddings.position_embedding.weight"] = g.randn({77, W}, 0.01);
  t["text_model.final_layer_norm.weight"] = torch::ones({W});
  t["text_model.final_layer_norm.bias"] = torch::zeros({W});
  t["text_projection.weight"] = g.randn({o.embed_dim, W});
  for (int64_t l = 0; l < o.text_layers; ++l)
    put_block(t, fmt::format("text_model.encoder.layers.{}.", l), random_block(W, g));
  io::save_safetensors(dir / "model.safetensors", t, {{"format", "pt"}});

  nlohmann::json cfg = {
      {"architectures", {"CLIPModel"}},
      {"model_type", "clip"},
      {"projection_dim", o.embed_dim},
      {"torch_dtype", "float32"},
      {"iadgpt_note", "random demo towers made by `iadgpt demo`; not a trained CLIP"},
      {"text_config",
       {{"model_type", "clip_text_model"}, {"vocab_size", text_vocab}, {"hidden_size", W},
        {"intermediate_size", 4 * W}, {"projection_dim", o.embed_dim}, {"num_hidden_layers", o.text_layers},
        {"num_attention_heads", o.text_heads}, {"max_position_embeddings", 77}, {"hidden_act", "quick_gelu"},
        {"layer_norm_eps", 1e-5}, {"bos_token_id", text_vocab - 2}, {"eos_token_id", text_vocab - 1}}},
      {"vision_config",
       {{"model_type", "clip_vision_model"}, {"hidden_size", o.vision_width},
        {"intermediate_size", 4 * o.vision_width}, {"projection_dim", o.embed_dim},
        {"num_hidden_layers", o.vision_layers}, {"num_attention_heads", o.vision_heads}, {"num_channels", 3},
        {"image_size", o.image_size}, {"patch_size", o.patch_size}, {"hidden_act", "quick_gelu"},
        {"layer_norm_eps", 1e-5}}}};
  write_json(dir / "config.json", cfg);
  return vocab_path;
}

std::vector<std::string> answer_corpus(const std::vector<std::string>& classes, const std::vector<std::string>& defects) {
  std::vector<std::string> out{"### Human: <Img>", "</Img> ", "\n### Assistant:", "\n###",
                               "Is there any anomaly in the image?", "No, there is no anomaly in the image."};
  for (const auto& c : classes)
    out.push_back(fmt::format("This is a photo of a {} for anomaly detection, which should be without any damage, "
                              "flaw, defect, scratch, hole or broken part.", anomaly::display_class_name(c)));
  const auto& cells = anomaly::cell_names();
  // As many "No" answers as "Yes" ones (the training pairs are balanced), so that "No" — like
  // "Yes" — becomes a piece of its own: the fast decision reads the first answer token.
  for (size_t i = 0; i < cells.size() * (cells.size() + 1); ++i) out.push_back(anomaly::describe({}));
  for (const auto& a : cells) {
    anomaly::Region r{.position = a};
    out.push_back(anomaly::describe({r}));
    for (const auto& b : cells) {
      anomaly::Region s{.position = b};
      out.push_back(anomaly::describe({r, s}));
    }
  }
  for (const auto& d : defects) out.push_back(fmt::format("It looks like a {}.", d));
  return out;
}

int64_t train_llm_tokenizer(const fs::path& dir, const std::vector<std::string>& corpus, int64_t vocab_size) {
  fs::create_directories(dir);
  const fs::path input = dir / "tokenizer_corpus.txt";
  std::string text;
  for (const auto& line : corpus) {
    std::string l = line;
    std::replace(l.begin(), l.end(), '\n', ' ');  // SentencePiece reads one sentence a line
    text += l + "\n";
  }
  write_text(input, text);
  // LLaMA's conventions (unk 0, bos 1, eos 2, no pad, byte fallback, digits split); one thread and
  // no sentence sampling so the model is the same on every machine; hard_vocab_limit=false lets a
  // small corpus stop below `vocab_size` instead of failing.
  llm::train_tokenizer({"--input=" + input.string(), "--model_prefix=" + (dir / "tokenizer").string(),
                        fmt::format("--vocab_size={}", vocab_size), "--model_type=bpe", "--character_coverage=1.0",
                        "--byte_fallback=true", "--split_digits=true", "--unk_id=0", "--bos_id=1", "--eos_id=2",
                        "--pad_id=-1", "--hard_vocab_limit=false", "--num_threads=1", "--input_sentence_size=0",
                        "--shuffle_input_sentence=false", "--minloglevel=2"});
  fs::remove(dir / "tokenizer.vocab");
  return llm::Tokenizer::from_path(dir / "tokenizer.model").vocab_size();
}

llm::LlamaConfig write_tiny_llama(const fs::path& dir, const TinyLlamaOptions& o) {
  fs::create_directories(dir);
  llm::LlamaConfig c;
  c.vocab_size = o.vocab_size, c.hidden_size = o.hidden, c.intermediate_size = o.intermediate;
  c.num_layers = o.layers, c.num_heads = o.heads, c.num_kv_heads = o.heads, c.max_position_embeddings = o.max_positions;
  c.rms_norm_eps = 1e-5;
  llm::save_hf_checkpoint(dir, c, llm::random_weights(c, torch::kFloat32, o.seed),
                          {{"iadgpt_note", "random demo LLM made by `iadgpt demo`"}});
  return c;
}

}  // namespace iadgpt::demo
