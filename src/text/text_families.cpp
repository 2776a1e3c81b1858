// Checkpoint key maps of the text towers, one table per family, and the loader that fills
// TextWeights from them. Hyper-parameters come from tensor shapes; what shapes cannot tell
// (heads, OpenCLIP's activation) comes from a JSON config, with upstream's own default rule.
#include <fmt/format.h>

#include <array>
#include <set>
#include <span>

#include "io/error.h"
#include "io/heap.h"
#include "nn/weights.h"
#include "text/text_tower.h"

namespace iadgpt::text {
namespace {

enum class Role {
  TokenEmbedding, PosEmbedding, Mask, FinalLnWeight, FinalLnBias, Projection, LogitScale,
  // per block
  Ln1Weight, Ln1Bias, QkvWeight, QkvBias, QWeight, QBias, KWeight, KBias, VWeight, VBias,
  OutWeight, OutBias, Ln2Weight, Ln2Bias, Fc1Weight, Fc1Bias, Fc2Weight, Fc2Bias,
};

enum class Layout {
  AsIs,
  Leading1,    // stored with an extra leading 1 (ImageBind pos_embed [1, C, W])
  Transposed,  // stored as the transpose of our layout (OpenAI text_projection [W, D])
};

struct KeyRow {
  Role role;
  const char* key;  // block rows contain {} for the block index
  Layout layout = Layout::AsIs;
};

struct FamilyKeys {
  std::span<const KeyRow> globals;
  std::span<const KeyRow> block;
};

// --- ImageBind (facebookresearch/ImageBind imagebind_model.py; AnomalyGPT loads the same file).
constexpr KeyRow kImageBindGlobals[] = {
    {Role::TokenEmbedding, "modality_preprocessors.text.token_embedding.weight"},
    {Role::PosEmbedding, "modality_preprocessors.text.pos_embed", Layout::Leading1},
    {Role::Mask, "modality_preprocessors.text.mask"},
    {Role::FinalLnWeight, "modality_heads.text.proj.0.weight"},
    {Role::FinalLnBias, "modality_heads.text.proj.0.bias"},
    {Role::Projection, "modality_heads.text.proj.1.weight"},
    {Role::LogitScale, "modality_postprocessors.text.1.log_logit_scale"},
};
constexpr KeyRow kImageBindBlock[] = {
    {Role::Ln1Weight, "modality_trunks.text.blocks.{}.norm_1.weight"},
    {Role::Ln1Bias, "modality_trunks.text.blocks.{}.norm_1.bias"},
    {Role::QkvWeight, "modality_trunks.text.blocks.{}.attn.in_proj_weight"},
    {Role::QkvBias, "modality_trunks.text.blocks.{}.attn.in_proj_bias"},
    {Role::OutWeight, "modality_trunks.text.blocks.{}.attn.out_proj.weight"},
    {Role::OutBias, "modality_trunks.text.blocks.{}.attn.out_proj.bias"},
    {Role::Ln2Weight, "modality_trunks.text.blocks.{}.norm_2.weight"},
    {Role::Ln2Bias, "modality_trunks.text.blocks.{}.norm_2.bias"},
    {Role::Fc1Weight, "modality_trunks.text.blocks.{}.mlp.fc1.weight"},
    {Role::Fc1Bias, "modality_trunks.text.blocks.{}.mlp.fc1.bias"},
    {Role::Fc2Weight, "modality_trunks.text.blocks.{}.mlp.fc2.weight"},
    {Role::Fc2Bias, "modality_trunks.text.blocks.{}.mlp.fc2.bias"},
};

// --- OpenAI CLIP (openai/CLIP model.py) and OpenCLIP (same state-dict names).
constexpr KeyRow kClipGlobals[] = {
    {Role::TokenEmbedding, "token_embedding.weight"},
    {Role::PosEmbedding, "positional_embedding"},
    {Role::FinalLnWeight, "ln_final.weight"},
    {Role::FinalLnBias, "ln_final.bias"},
    {Role::Projection, "text_projection", Layout::Transposed},  // x @ P, P: [W, D]
};
constexpr KeyRow kClipBlock[] = {
    {Role::Ln1Weight, "transformer.resblocks.{}.ln_1.weight"},
    {Role::Ln1Bias, "transformer.resblocks.{}.ln_1.bias"},
    {Role::QkvWeight, "transformer.resblocks.{}.attn.in_proj_weight"},
    {Role::QkvBias, "transformer.resblocks.{}.attn.in_proj_bias"},
    {Role::OutWeight, "transformer.resblocks.{}.attn.out_proj.weight"},
    {Role::OutBias, "transformer.resblocks.{}.attn.out_proj.bias"},
    {Role::Ln2Weight, "transformer.resblocks.{}.ln_2.weight"},
    {Role::Ln2Bias, "transformer.resblocks.{}.ln_2.bias"},
    {Role::Fc1Weight, "transformer.resblocks.{}.mlp.c_fc.weight"},
    {Role::Fc1Bias, "transformer.resblocks.{}.mlp.c_fc.bias"},
    {Role::Fc2Weight, "transformer.resblocks.{}.mlp.c_proj.weight"},
    {Role::Fc2Bias, "transformer.resblocks.{}.mlp.c_proj.bias"},
};

// --- Hugging Face CLIPModel (transformers modeling_clip.py): q/k/v split, Linear projection.
constexpr KeyRow kHfGlobals[] = {
    {Role::TokenEmbedding, "text_model.embeddings.token_embedding.weight"},
    {Role::PosEmbedding, "text_model.embeddings.position_embedding.weight"},
    {Role::FinalLnWeight, "text_model.final_layer_norm.weight"},
    {Role::FinalLnBias, "text_model.final_layer_norm.bias"},
    {Role::Projection, "text_projection.weight"},
};
constexpr KeyRow kHfBlock[] = {
    {Role::Ln1Weight, "text_model.encoder.layers.{}.layer_norm1.weight"},
    {Role::Ln1Bias, "text_model.encoder.layers.{}.layer_norm1.bias"},
    {Role::QWeight, "text_model.encoder.layers.{}.self_attn.q_proj.weight"},
    {Role::QBias, "text_model.encoder.layers.{}.self_attn.q_proj.bias"},
    {Role::KWeight, "text_model.encoder.layers.{}.self_attn.k_proj.weight"},
    {Role::KBias, "text_model.encoder.layers.{}.self_attn.k_proj.bias"},
    {Role::VWeight, "text_model.encoder.layers.{}.self_attn.v_proj.weight"},
    {Role::VBias, "text_model.encoder.layers.{}.self_attn.v_proj.bias"},
    {Role::OutWeight, "text_model.encoder.layers.{}.self_attn.out_proj.weight"},
    {Role::OutBias, "text_model.encoder.layers.{}.self_attn.out_proj.bias"},
    {Role::Ln2Weight, "text_model.encoder.layers.{}.layer_norm2.weight"},
    {Role::Ln2Bias, "text_model.encoder.layers.{}.layer_norm2.bias"},
    {Role::Fc1Weight, "text_model.encoder.layers.{}.mlp.fc1.weight"},
    {Role::Fc1Bias, "text_model.encoder.layers.{}.mlp.fc1.bias"},
    {Role::Fc2Weight, "text_model.encoder.layers.{}.mlp.fc2.weight"},
    {Role::Fc2Bias, "text_model.encoder.layers.{}.mlp.fc2.bias"},
};

FamilyKeys keys_of(TextFamily family) {
  switch (family) {
    case TextFamily::ImageBind: return {kImageBindGlobals, kImageBindBlock};
    case TextFamily::OpenAiClip:
    case TextFamily::OpenClip: return {kClipGlobals, kClipBlock};
    case TextFamily::HfClip: return {kHfGlobals, kHfBlock};
  }
  throw std::logic_error("unknown text family");
}

const KeyRow& row_of(std::span<const KeyRow> rows, Role role) {
  for (const auto& r : rows)
    if (r.role == role) return r;
  throw std::logic_error("text key table lacks a role");
}

// Our layout of each role, from the configuration.
std::vector<int64_t> shape_of(Role role, const TextConfig& c) {
  const int64_t W = c.width, F = c.mlp_width;
  switch (role) {
    case Role::TokenEmbedding: return {c.vocab_size, W};
    case Role::PosEmbedding: return {c.context_length, W};
    case Role::Mask: return {c.context_length, c.context_length};
    case Role::Projection: return {c.embed_dim, W};
    case Role::LogitScale: return {};
    case Role::QkvWeight: return {3 * W, W};
    case Role::QkvBias: return {3 * W};
    case Role::QWeight: case Role::KWeight: case Role::VWeight: case Role::OutWeight: return {W, W};
    case Role::Fc1Weight: return {F, W};
    case Role::Fc1Bias: return {F};
    case Role::Fc2Weight: return {W, F};
    default: return {W};  // LayerNorm parameters and W-sized biases
  }
}

std::vector<int64_t> stored_shape(const KeyRow& row, std::vector<int64_t> shape) {
  if (row.layout == Layout::Leading1) shape.insert(shape.begin(), 1);
  if (row.layout == Layout::Transposed) std::reverse(shape.begin(), shape.end());
  return shape;
}

std::string block_key(const TextConfig& c, const KeyRow& row, int64_t i) {
  return c.key_prefix + fmt::format(fmt::runtime(row.key), i);
}

// Finds the key a family's token embedding has, possibly under a prefix ("module.", ...).
std::optional<std::pair<TextFamily, std::string>> find_family(const io::TensorMap& tensors) {
  struct Marker {
    TextFamily family;
    const char* key;
  };
  // The block key disambiguates `token_embedding.weight`, which other models use too.
  static constexpr Marker kMarkers[] = {
      {TextFamily::ImageBind, "modality_preprocessors.text.token_embedding.weight"},
      {TextFamily::HfClip, "text_model.embeddings.token_embedding.weight"},
      {TextFamily::OpenAiClip, "token_embedding.weight"},
  };
  for (const auto& m : kMarkers) {
    const std::string_view key = m.key;
    for (const auto& [name, t] : tensors) {
      if (name.size() < key.size() || name.compare(name.size() - key.size(), key.size(), key) != 0)
        continue;
      std::string prefix = name.substr(0, name.size() - key.size());
      if (!prefix.empty() && prefix.back() != '.') continue;
      if (m.family == TextFamily::OpenAiClip &&
          !tensors.count(prefix + "transformer.resblocks.0.attn.in_proj_weight"))
        continue;
      return std::make_pair(m.family, prefix);
    }
  }
  return std::nullopt;
}

// --- JSON configuration lookups ------------------------------------------------------------

const nlohmann::json* at_path(const nlohmann::json& j, std::initializer_list<const char*> path) {
  const nlohmann::json* cur = &j;
  for (const char* p : path) {
    if (!cur->is_object() || !cur->contains(p)) return nullptr;
    cur = &(*cur)[p];
  }
  return cur;
}

std::optional<int64_t> find_int(const nlohmann::json* j,
                                std::initializer_list<std::initializer_list<const char*>> paths) {
  if (!j) return std::nullopt;
  for (auto path : paths)
    if (const auto* v = at_path(*j, path); v && v->is_number_integer()) return v->get<int64_t>();
  return std::nullopt;
}

std::optional<std::string> find_string(const nlohmann::json* j,
                                       std::initializer_list<std::initializer_list<const char*>> paths) {
  if (!j) return std::nullopt;
  for (auto path : paths)
    if (const auto* v = at_path(*j, path); v && v->is_string()) return v->get<std::string>();
  return std::nullopt;
}

std::optional<TextFamily> family_from_string(std::string_view s) {
  if (s == "imagebind") return TextFamily::ImageBind;
  if (s == "openai_clip" || s == "openai") return TextFamily::OpenAiClip;
  if (s == "open_clip" || s == "openclip") return TextFamily::OpenClip;
  if (s == "hf_clip" || s == "hf") return TextFamily::HfClip;
  return std::nullopt;
}

int64_t count_blocks(const io::TensorMap& t, const TextConfig& c, const KeyRow& first_row) {
  int64_t n = 0;
  while (t.count(block_key(c, first_row, n))) ++n;
  return n;
}

const torch::Tensor& require(const io::TensorMap& t, const std::string& key, std::string_view source) {
  auto it = t.find(key);
  if (it == t.end()) throw InputError(fmt::format("{}: missing tensor '{}'", source, key));
  return it->second;
}

int64_t dim_of(const io::TensorMap& t, const std::string& key, int64_t d, int64_t ndim,
               std::string_view source) {
  const auto& x = require(t, key, source);
  if (x.dim() != ndim)
    throw InputError(fmt::format("{}: tensor '{}' has shape {}, expected {} dimensions", source,
                                 key, nn::shape_string(x.sizes()), ndim));
  return x.size(d);
}

TextConfig derive_config(const io::Checkpoint& ckpt, TextFamily family, std::string prefix,
                         const std::optional<nlohmann::json>& user_config) {
  const std::string source = ckpt.path.string();
  const auto& t = ckpt.tensors;
  const FamilyKeys keys = keys_of(family);
  const nlohmann::json* cfg = user_config ? &*user_config
                              : ckpt.hf_config ? &*ckpt.hf_config
                                               : nullptr;
  if (auto f = find_string(cfg, {{"family"}}); f) {
    auto named = family_from_string(*f);
    if (!named) throw InputError(fmt::format("config: unknown family '{}'", *f));
    // OpenAI and OpenCLIP share key names; the config may name either.
    const bool clip_pair = (family == TextFamily::OpenAiClip || family == TextFamily::OpenClip) &&
                           (*named == TextFamily::OpenAiClip || *named == TextFamily::OpenClip);
    if (*named != family && !clip_pair)
      throw InputError(fmt::format("{}: config names family '{}' but the keys are {}", source, *f,
                                   family_name(family)));
    family = *named;
  } else if (family == TextFamily::OpenAiClip && cfg && cfg->contains("text_cfg")) {
    family = TextFamily::OpenClip;  // an OpenCLIP model config (ViT-H-14.json etc.)
  }

  TextConfig c;
  c.family = family;
  c.key_prefix = std::move(prefix);
  const auto key = [&](Role r) { return c.key_prefix + row_of(keys.globals, r).key; };
  const auto& emb = require(t, key(Role::TokenEmbedding), source);
  if (emb.dim() != 2)
    throw InputError(fmt::format("{}: tensor '{}' has shape {}, expected [vocab, width]", source,
                                 key(Role::TokenEmbedding), nn::shape_string(emb.sizes())));
  c.vocab_size = emb.size(0);
  c.width = emb.size(1);
  const auto& pos_row = row_of(keys.globals, Role::PosEmbedding);
  c.context_length = dim_of(t, key(Role::PosEmbedding), pos_row.layout == Layout::Leading1 ? 1 : 0,
                            pos_row.layout == Layout::Leading1 ? 3 : 2, source);
  const auto& proj_row = row_of(keys.globals, Role::Projection);
  c.embed_dim = dim_of(t, key(Role::Projection), proj_row.layout == Layout::Transposed ? 1 : 0, 2, source);
  c.layers = count_blocks(t, c, keys.block.front());
  if (c.layers == 0)
    throw InputError(fmt::format("{}: no text blocks (missing tensor '{}')", source,
                                 block_key(c, keys.block.front(), 0)));
  c.mlp_width = dim_of(t, block_key(c, row_of(keys.block, Role::Fc1Weight), 0), 0, 2, source);

  const nlohmann::json* hf_text = cfg && cfg->contains("text_config") ? &(*cfg)["text_config"] : cfg;
  std::optional<int64_t> heads;
  switch (family) {
    case TextFamily::ImageBind:
      c.eps = 1e-6;
      c.activation = nn::Activation::Gelu;
      heads = find_int(cfg, {{"text_num_heads"}, {"constructor_kwargs", "text_num_heads"},
                             {"text", "num_heads"}, {"heads"}});
      break;
    case TextFamily::OpenAiClip:
      c.eps = 1e-5;
      c.activation = nn::Activation::QuickGelu;
      heads = find_int(cfg, {{"transformer_heads"}, {"clip_constructor_kwargs", "transformer_heads"},
                             {"heads"}});
      break;
    case TextFamily::OpenClip: {
      c.eps = 1e-5;
      const auto* quick = cfg ? at_path(*cfg, {"quick_gelu"}) : nullptr;
      c.activation = (quick && quick->is_boolean() && quick->get<bool>()) ? nn::Activation::QuickGelu
                                                                          : nn::Activation::Gelu;
      heads = find_int(cfg, {{"text_cfg", "heads"}, {"heads"}});
      break;
    }
    case TextFamily::HfClip: {
      heads = find_int(hf_text, {{"num_attention_heads"}});
      const auto* eps = hf_text ? at_path(*hf_text, {"layer_norm_eps"}) : nullptr;
      c.eps = (eps && eps->is_number()) ? eps->get<double>() : 1e-5;
      const auto act = find_string(hf_text, {{"hidden_act"}}).value_or("quick_gelu");
      if (act == "quick_gelu") c.activation = nn::Activation::QuickGelu;
      else if (act == "gelu") c.activation = nn::Activation::Gelu;
      else throw InputError(fmt::format("{}: unsupported text hidden_act '{}'", source, act));
      c.eos_token_id = find_int(hf_text, {{"eos_token_id"}}).value_or(2);
      break;
    }
  }
  // openai/CLIP build_model and ImageBind huge both use 64-wide heads.
  if (!heads) {
    if (c.width % 64 != 0)
      throw InputError(fmt::format(
          "{}: cannot infer the text heads for width {} (not a multiple of 64); give a config "
          "with the head count (e.g. --config with text_num_heads)", source, c.width));
    heads = c.width / 64;
  }
  c.heads = *heads;
  if (c.heads <= 0 || c.width % c.heads != 0)
    throw InputError(fmt::format("{}: text width {} is not divisible by {} heads", source, c.width,
                                 c.heads));
  return c;
}

torch::Tensor load_row(const io::TensorMap& t, const KeyRow& row, const std::string& key,
                       const TextConfig& c, std::string_view source, torch::Dtype dtype) {
  auto x = nn::take(t, key, stored_shape(row, shape_of(row.role, c)), source, dtype);
  if (row.layout == Layout::Leading1) x = x.squeeze(0);
  if (row.layout == Layout::Transposed) x = x.t().contiguous();
  return x;
}

bool is_layer_norm(Role r) {
  return r == Role::FinalLnWeight || r == Role::FinalLnBias || r == Role::Ln1Weight ||
         r == Role::Ln1Bias || r == Role::Ln2Weight || r == Role::Ln2Bias;
}

}  // namespace

std::string_view family_name(TextFamily family) {
  switch (family) {
    case TextFamily::ImageBind: return "imagebind";
    case TextFamily::OpenAiClip: return "openai_clip";
    case TextFamily::OpenClip: return "open_clip";
    case TextFamily::HfClip: return "hf_clip";
  }
  return "unknown";
}

std::optional<TextFamily> detect_text_family(const io::TensorMap& tensors) {
  auto f = find_family(tensors);
  if (!f) return std::nullopt;
  return f->first;
}

TextTower load_text_tower(const io::Checkpoint& ckpt, const TextLoadOptions& options) {
  const std::string source = ckpt.path.string();
  if (options.dtype != torch::kFloat32 && options.dtype != torch::kBFloat16)
    throw InputError("text tower dtype must be f32 or bf16");
  auto found = find_family(ckpt.tensors);
  if (!found)
    throw InputError(fmt::format(
        "{}: no CLIP-family text tower found (looked for ImageBind "
        "'modality_preprocessors.text.token_embedding.weight', OpenAI/OpenCLIP "
        "'token_embedding.weight', HF 'text_model.embeddings.token_embedding.weight')", source));

  TextTower tower;
  tower.dtype = options.dtype;
  tower.config = derive_config(ckpt, found->first, found->second, options.config);
  const TextConfig& c = tower.config;
  const FamilyKeys keys = keys_of(c.family);
  const auto& t = ckpt.tensors;
  // LayerNorm parameters, the mask and the logit scale stay fp32 (nn::layer_norm computes in fp32).
  auto dtype_for = [&](Role r) {
    return (is_layer_norm(r) || r == Role::Mask || r == Role::LogitScale) ? torch::kFloat32
                                                                         : options.dtype;
  };

  TextWeights& w = tower.weights;
  for (const KeyRow& row : keys.globals) {
    auto x = load_row(t, row, c.key_prefix + row.key, c, source, dtype_for(row.role));
    switch (row.role) {
      case Role::TokenEmbedding: w.token_embedding = x; break;
      case Role::PosEmbedding: w.pos_embedding = x; break;
      case Role::Mask: w.mask = x; break;
      case Role::FinalLnWeight: w.final_ln_weight = x; break;
      case Role::FinalLnBias: w.final_ln_bias = x; break;
      case Role::Projection: w.projection = x; break;
      case Role::LogitScale: w.log_logit_scale = x; break;
      default: throw std::logic_error("block role in a global table");
    }
  }

  for (int64_t i = 0; i < c.layers; ++i) {
    nn::BlockWeights b;
    torch::Tensor q_w, q_b, k_w, k_b, v_w, v_b;  // HF stores q/k/v separately
    for (const KeyRow& row : keys.block) {
      auto x = load_row(t, row, block_key(c, row, i), c, source, dtype_for(row.role));
      switch (row.role) {
        case Role::Ln1Weight: b.ln1_weight = x; break;
        case Role::Ln1Bias: b.ln1_bias = x; break;
        case Role::QkvWeight: b.qkv_weight = x; break;
        case Role::QkvBias: b.qkv_bias = x; break;
        case Role::QWeight: q_w = x; break;
        case Role::QBias: q_b = x; break;
        case Role::KWeight: k_w = x; break;
        case Role::KBias: k_b = x; break;
        case Role::VWeight: v_w = x; break;
        case Role::VBias: v_b = x; break;
        case Role::OutWeight: b.out_weight = x; break;
        case Role::OutBias: b.out_bias = x; break;
        case Role::Ln2Weight: b.ln2_weight = x; break;
        case Role::Ln2Bias: b.ln2_bias = x; break;
        case Role::Fc1Weight: b.fc1_weight = x; break;
        case Role::Fc1Bias: b.fc1_bias = x; break;
        case Role::Fc2Weight: b.fc2_weight = x; break;
        case Role::Fc2Bias: b.fc2_bias = x; break;
        default: throw std::logic_error("global role in a block table");
      }
    }
    if (q_w.defined()) {  // rows q, k, v: nn.MultiheadAttention's packing
      b.qkv_weight = torch::cat({q_w, k_w, v_w}, 0).contiguous();
      b.qkv_bias = torch::cat({q_b, k_b, v_b}, 0).contiguous();
    }
    w.blocks.push_back(std::move(b));
  }
  if (w.mask.defined()) {
    // ImageBind stores its causal mask; check it is one (0 on/below the diagonal, -inf above).
    auto upper = torch::triu(torch::ones({c.context_length, c.context_length}, torch::kBool), 1);
    const bool causal = torch::all(w.mask.masked_select(upper) == -INFINITY).item<bool>() &&
                        torch::all(w.mask.masked_select(~upper) == 0).item<bool>();
    if (!causal)
      throw InputError(fmt::format("{}: tensor '{}' is not a causal mask (0 / -inf)", source,
                                   c.key_prefix + row_of(keys.globals, Role::Mask).key));
  }
  return tower;
}

namespace {
// ImageBind files hold six modalities as modality_{preprocessors,trunks,heads,postprocessors}.<m>.*;
// the text tower needs only m == text, and a lazy zip read then skips the other ~3.4 GB. (Other
// families' vision keys are kept: family detection looks at them.)
bool other_imagebind_modality(const std::string& key) {
  if (!key.starts_with("modality_")) return false;
  const auto a = key.find('.');
  if (a == std::string::npos) return false;
  const auto b = key.find('.', a + 1);
  return key.compare(a + 1, b == std::string::npos ? std::string::npos : b - a - 1, "text") != 0;
}
}  // namespace

TextTower load_text_tower(const std::filesystem::path& path, const TextLoadOptions& options) {
  auto wanted = [](const std::string& k) { return !other_imagebind_modality(k); };
  // Matrices are converted to the tower's dtype as each record is read, so the stored fp32 copy
  // (1.4 GB for ImageBind-Huge's text) never exists whole; vectors and scalars (LayerNorm, biases,
  // the logit scale) are read as stored and load_row gives them their role's precision. Either
  // way each value is rounded once, from the stored one: the weights equal a whole-file load's.
  const auto headers = io::load_checkpoint(path, {.keys = wanted, .headers_only = true});
  std::set<std::string> matrices;
  for (const auto& [key, t] : headers.tensors)
    if (t.dim() >= 2 && at::isFloatingType(t.scalar_type())) matrices.insert(key);
  auto ckpt = io::load_checkpoint(
      path, {.float_dtype = options.dtype, .keys = [&](const std::string& k) { return wanted(k) && matrices.count(k); }});
  auto rest = io::load_checkpoint(path, {.keys = [&](const std::string& k) { return wanted(k) && !matrices.count(k); }});
  ckpt.tensors.merge(rest.tensors);
  auto tower = load_text_tower(ckpt, options);
  ckpt.tensors.clear();
  io::release_free_heap();  // the read buffers
  return tower;
}

}  // namespace iadgpt::text
