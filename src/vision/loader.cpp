#include "vision/loader.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>

#include "io/error.h"
#include "io/heap.h"
#include "io/mapped_file.h"
#include "nn/transformer.h"
#include "nn/weights.h"

namespace iadgpt::vision {
namespace {

// How a checkpoint tensor becomes ours.
enum class Fix {
  None,
  Flatten,    // drop leading singleton dims ([1,1,D_v] → [D_v], [1,T,D_v] → [T,D_v])
  SumFrames,  // ImageBind's 2-frame Conv3d on a repeated image = 2D conv with W[:,:,0] + W[:,:,1]
  Transpose,  // OpenAI `visual.proj` [D_v, D] → Linear layout [D, D_v]
  ConcatQkv,  // HF separate q/k/v projections ("{qkv}" in the key) stacked by rows
};

// Shapes are written with symbols: Dv width, D joint width, F MLP width, p patch, T tokens.
struct TopRow {
  torch::Tensor VitWeights::*field;
  const char* key;
  const char* shape;
  Fix fix = Fix::None;
  bool optional = false;
};

struct BlockRow {
  torch::Tensor nn::BlockWeights::*field;
  const char* key;  // "{}" = block index
  const char* shape;
  Fix fix = Fix::None;
};

// Where `field` may be stored quantized (null: never, it stays in the model dtype).
nn::QuantMatrix nn::BlockWeights::*quant_slot(torch::Tensor nn::BlockWeights::*field) {
  for (const auto& slot : nn::kQuantSlots)
    if (slot.weight == field) return slot.quant;
  return nullptr;
}

struct KeyMap {
  std::vector<TopRow> top;
  std::vector<BlockRow> block;
};

using W = VitWeights;
using BW = nn::BlockWeights;

const KeyMap& imagebind_map() {
  static const KeyMap map{
      {
          {&W::patch_weight, "modality_preprocessors.vision.rgbt_stem.proj.1.weight", "Dv,3,2,p,p", Fix::SumFrames},
          {&W::cls_token, "modality_preprocessors.vision.cls_token", "1,1,Dv", Fix::Flatten},
          {&W::pos_embed, "modality_preprocessors.vision.pos_embedding_helper.pos_embed", "1,T,Dv", Fix::Flatten},
          {&W::pre_ln_weight, "modality_trunks.vision.pre_transformer_layer.0.weight", "Dv"},
          {&W::pre_ln_bias, "modality_trunks.vision.pre_transformer_layer.0.bias", "Dv"},
          {&W::head_ln_weight, "modality_heads.vision.0.weight", "Dv"},
          {&W::head_ln_bias, "modality_heads.vision.0.bias", "Dv"},
          {&W::proj, "modality_heads.vision.2.weight", "D,Dv"},
      },
      {
          {&BW::ln1_weight, "modality_trunks.vision.blocks.{}.norm_1.weight", "Dv"},
          {&BW::ln1_bias, "modality_trunks.vision.blocks.{}.norm_1.bias", "Dv"},
          {&BW::qkv_weight, "modality_trunks.vision.blocks.{}.attn.in_proj_weight", "3Dv,Dv"},
          {&BW::qkv_bias, "modality_trunks.vision.blocks.{}.attn.in_proj_bias", "3Dv"},
          {&BW::out_weight, "modality_trunks.vision.blocks.{}.attn.out_proj.weight", "Dv,Dv"},
          {&BW::out_bias, "modality_trunks.vision.blocks.{}.attn.out_proj.bias", "Dv"},
          {&BW::ln2_weight, "modality_trunks.vision.blocks.{}.norm_2.weight", "Dv"},
          {&BW::ln2_bias, "modality_trunks.vision.blocks.{}.norm_2.bias", "Dv"},
          {&BW::fc1_weight, "modality_trunks.vision.blocks.{}.mlp.fc1.weight", "F,Dv"},
          {&BW::fc1_bias, "modality_trunks.vision.blocks.{}.mlp.fc1.bias", "F"},
          {&BW::fc2_weight, "modality_trunks.vision.blocks.{}.mlp.fc2.weight", "Dv,F"},
          {&BW::fc2_bias, "modality_trunks.vision.blocks.{}.mlp.fc2.bias", "Dv"},
      }};
  return map;
}

// openai/CLIP and mlfoundations/open_clip share these names.
const KeyMap& openai_map() {
  static const KeyMap map{
      {
          {&W::patch_weight, "visual.conv1.weight", "Dv,3,p,p"},
          {&W::cls_token, "visual.class_embedding", "Dv"},
          {&W::pos_embed, "visual.positional_embedding", "T,Dv"},
          {&W::pre_ln_weight, "visual.ln_pre.weight", "Dv"},
          {&W::pre_ln_bias, "visual.ln_pre.bias", "Dv"},
          {&W::head_ln_weight, "visual.ln_post.weight", "Dv"},
          {&W::head_ln_bias, "visual.ln_post.bias", "Dv"},
          {&W::proj, "visual.proj", "Dv,D", Fix::Transpose},
      },
      {
          {&BW::ln1_weight, "visual.transformer.resblocks.{}.ln_1.weight", "Dv"},
          {&BW::ln1_bias, "visual.transformer.resblocks.{}.ln_1.bias", "Dv"},
          {&BW::qkv_weight, "visual.transformer.resblocks.{}.attn.in_proj_weight", "3Dv,Dv"},
          {&BW::qkv_bias, "visual.transformer.resblocks.{}.attn.in_proj_bias", "3Dv"},
          {&BW::out_weight, "visual.transformer.resblocks.{}.attn.out_proj.weight", "Dv,Dv"},
          {&BW::out_bias, "visual.transformer.resblocks.{}.attn.out_proj.bias", "Dv"},
          {&BW::ln2_weight, "visual.transformer.resblocks.{}.ln_2.weight", "Dv"},
          {&BW::ln2_bias, "visual.transformer.resblocks.{}.ln_2.bias", "Dv"},
          {&BW::fc1_weight, "visual.transformer.resblocks.{}.mlp.c_fc.weight", "F,Dv"},
          {&BW::fc1_bias, "visual.transformer.resblocks.{}.mlp.c_fc.bias", "F"},
          {&BW::fc2_weight, "visual.transformer.resblocks.{}.mlp.c_proj.weight", "Dv,F"},
          {&BW::fc2_bias, "visual.transformer.resblocks.{}.mlp.c_proj.bias", "Dv"},
      }};
  return map;
}

// transformers CLIPModel / CLIPVisionModel(WithProjection).
const KeyMap& hf_map() {
  static const KeyMap map{
      {
          {&W::patch_weight, "vision_model.embeddings.patch_embedding.weight", "Dv,3,p,p"},
          {&W::cls_token, "vision_model.embeddings.class_embedding", "Dv"},
          {&W::pos_embed, "vision_model.embeddings.position_embedding.weight", "T,Dv"},
          {&W::pre_ln_weight, "vision_model.pre_layrnorm.weight", "Dv"},  // sic: upstream spelling
          {&W::pre_ln_bias, "vision_model.pre_layrnorm.bias", "Dv"},
          {&W::head_ln_weight, "vision_model.post_layernorm.weight", "Dv"},
          {&W::head_ln_bias, "vision_model.post_layernorm.bias", "Dv"},
          {&W::proj, "visual_projection.weight", "D,Dv", Fix::None, /*optional=*/true},
      },
      {
          {&BW::ln1_weight, "vision_model.encoder.layers.{}.layer_norm1.weight", "Dv"},
          {&BW::ln1_bias, "vision_model.encoder.layers.{}.layer_norm1.bias", "Dv"},
          {&BW::qkv_weight, "vision_model.encoder.layers.{}.self_attn.{qkv}_proj.weight", "Dv,Dv", Fix::ConcatQkv},
          {&BW::qkv_bias, "vision_model.encoder.layers.{}.self_attn.{qkv}_proj.bias", "Dv", Fix::ConcatQkv},
          {&BW::out_weight, "vision_model.encoder.layers.{}.self_attn.out_proj.weight", "Dv,Dv"},
          {&BW::out_bias, "vision_model.encoder.layers.{}.self_attn.out_proj.bias", "Dv"},
          {&BW::ln2_weight, "vision_model.encoder.layers.{}.layer_norm2.weight", "Dv"},
          {&BW::ln2_bias, "vision_model.encoder.layers.{}.layer_norm2.bias", "Dv"},
          {&BW::fc1_weight, "vision_model.encoder.layers.{}.mlp.fc1.weight", "F,Dv"},
          {&BW::fc1_bias, "vision_model.encoder.layers.{}.mlp.fc1.bias", "F"},
          {&BW::fc2_weight, "vision_model.encoder.layers.{}.mlp.fc2.weight", "Dv,F"},
          {&BW::fc2_bias, "vision_model.encoder.layers.{}.mlp.fc2.bias", "Dv"},
      }};
  return map;
}

const KeyMap& key_map(Family family) {
  switch (family) {
    case Family::ImageBind: return imagebind_map();
    case Family::OpenAiClip:
    case Family::OpenClip: return openai_map();
    case Family::HfClip: return hf_map();
  }
  return openai_map();
}

std::string replace(std::string s, std::string_view what, std::string_view with) {
  if (auto pos = s.find(what); pos != std::string::npos) s.replace(pos, what.size(), with);
  return s;
}

std::string block_key(const char* key, int64_t i) { return replace(key, "{}", std::to_string(i)); }

const TopRow& top_row(const KeyMap& map, torch::Tensor VitWeights::*field) {
  for (const auto& r : map.top) {
    if (r.field == field) return r;
  }
  throw std::logic_error("key map without a required field");
}

const BlockRow& block_row(const KeyMap& map, torch::Tensor nn::BlockWeights::*field) {
  for (const auto& r : map.block) {
    if (r.field == field) return r;
  }
  throw std::logic_error("key map without a required field");
}

std::string source_name(const io::Checkpoint& ckpt) {
  return ckpt.path.empty() ? std::string("checkpoint") : ckpt.path.string();
}

const torch::Tensor& need(const io::Checkpoint& ckpt, const std::string& key, Family family) {
  auto it = ckpt.tensors.find(key);
  if (it == ckpt.tensors.end()) {
    throw InputError(fmt::format("{}: missing tensor '{}' (required by the {} vision tower)", source_name(ckpt),
                                 key, family_name(family)));
  }
  return it->second;
}

// The checkpoint keys one row reads: its own, or HF's separate q, k and v projections.
std::vector<std::string> source_keys(const std::string& key, Fix fix) {
  if (fix != Fix::ConcatQkv) return {key};
  return {replace(key, "{qkv}", "q"), replace(key, "{qkv}", "k"), replace(key, "{qkv}", "v")};
}

std::vector<int64_t> shape_of(std::string_view spec, const VitConfig& c) {
  std::vector<int64_t> shape;
  size_t start = 0;
  while (start <= spec.size()) {
    size_t end = spec.find(',', start);
    if (end == std::string_view::npos) end = spec.size();
    const auto sym = spec.substr(start, end - start);
    if (sym == "Dv") shape.push_back(c.width);
    else if (sym == "3Dv") shape.push_back(3 * c.width);
    else if (sym == "D") shape.push_back(c.embed_dim);
    else if (sym == "F") shape.push_back(c.mlp_dim);
    else if (sym == "p") shape.push_back(c.patch_size);
    else if (sym == "T") shape.push_back(c.tokens());
    else shape.push_back(std::stoll(std::string(sym)));
    start = end + 1;
  }
  return shape;
}

// Heads cannot be read from shapes. Sources, first found: --config {"heads"}, ImageBind's
// config.json, an HF config, then the released models' values.
std::optional<int64_t> heads_from_config(const std::optional<nlohmann::json>& cfg) {
  if (!cfg || !cfg->is_object()) return std::nullopt;
  const auto& c = *cfg;
  auto get = [](const nlohmann::json& j, const char* k) -> std::optional<int64_t> {
    if (j.is_object() && j.contains(k) && j[k].is_number_integer()) return j[k].get<int64_t>();
    return std::nullopt;
  };
  if (auto h = get(c, "heads")) return h;
  if (c.contains("vision") && c["vision"].is_object()) {
    if (auto h = get(c["vision"], "num_heads")) return h;
  }
  if (c.contains("constructor_kwargs")) {
    if (auto h = get(c["constructor_kwargs"], "vision_num_heads")) return h;
  }
  if (c.contains("vision_config")) {
    if (auto h = get(c["vision_config"], "num_attention_heads")) return h;
  }
  if (c.value("model_type", std::string()) == "clip_vision_model") return get(c, "num_attention_heads");
  return std::nullopt;
}

int64_t default_heads(Family family, int64_t width, const std::string& source) {
  switch (family) {
    case Family::ImageBind:
      // imagebind_huge: 1280 wide, 16 heads of 80 (imagebind_model.py); no other vision size was released.
      if (width == 1280) return 16;
      throw InputError(fmt::format(
          "{}: cannot tell the number of attention heads of a {}-wide ImageBind vision tower; "
          "pass --config with \"heads\" (or the model's config.json)", source, width));
    case Family::OpenClip:
      // open_clip ViT-H/g/bigG use head width 80/88/104 = 16 heads; the others 64 like OpenAI.
      if (width == 1280 || width == 1408 || width == 1664) return 16;
      return width / 64;
    case Family::OpenAiClip:
    case Family::HfClip: return width / 64;  // clip.model.build_model: heads = width // 64
  }
  return width / 64;
}

std::optional<nlohmann::json> hf_config_of(const io::Checkpoint& ckpt, const VisionOptions& o) {
  if (ckpt.hf_config) return ckpt.hf_config;
  if (o.config && o.config->is_object() && o.config->contains("model_type")) return o.config;
  return std::nullopt;
}

std::optional<Family> family_from_config(const std::optional<nlohmann::json>& cfg) {
  if (cfg && cfg->is_object() && cfg->contains("family") && (*cfg)["family"].is_string()) {
    return parse_family((*cfg)["family"].get<std::string>());
  }
  return std::nullopt;
}

}  // namespace

VitConfig infer_vit_config(const io::Checkpoint& ckpt, const VisionOptions& o) {
  const auto hf = hf_config_of(ckpt, o);
  auto override_family = o.family ? o.family : family_from_config(o.config);
  const Family family = detect_family(ckpt.tensors, hf,
                                      {.override_family = override_family, .format = ckpt.format, .path = ckpt.path});
  const auto& map = key_map(family);
  const std::string source = source_name(ckpt);

  VitConfig c;
  c.family = family;
  c.eps = family_eps(family, hf, "vision_config");
  c.activation = family_activation(family, hf, "vision_config");
  c.width = need(ckpt, top_row(map, &W::pre_ln_weight).key, family).numel();
  const auto& patch = need(ckpt, top_row(map, &W::patch_weight).key, family);
  c.patch_size = patch.size(-1);
  const auto& pos = need(ckpt, top_row(map, &W::pos_embed).key, family);
  const int64_t tokens = c.width > 0 ? pos.numel() / c.width : 0;
  const auto grid = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(std::max<int64_t>(tokens - 1, 0)))));
  if (c.width <= 0 || tokens * c.width != pos.numel() || grid * grid != tokens - 1) {
    throw InputError(fmt::format("{}: tensor '{}' has shape [{}], which is not (1 + g²) tokens × width {}", source,
                                 top_row(map, &W::pos_embed).key, fmt::join(pos.sizes(), ","), c.width));
  }
  c.image_size = grid * c.patch_size;
  while (ckpt.tensors.count(block_key(block_row(map, &BW::ln1_weight).key, c.layers))) ++c.layers;
  if (c.layers == 0) need(ckpt, block_key(block_row(map, &BW::ln1_weight).key, 0), family);  // throws, naming the key
  const bool stored = stored_vision_quant(ckpt) != nn::QuantFormat::None;
  const auto fc1_key = block_key(block_row(map, &BW::fc1_weight).key, 0);
  c.mlp_dim = need(ckpt, stored ? nn::quant_codes_key(fc1_key) : fc1_key, family).size(0);

  const auto& proj_row = top_row(map, &W::proj);
  if (auto it = ckpt.tensors.find(proj_row.key); it != ckpt.tensors.end()) {
    c.embed_dim = proj_row.fix == Fix::Transpose ? it->second.size(-1) : it->second.size(0);
  } else if (proj_row.optional) {
    c.has_projection = false;
    c.embed_dim = c.width;
  } else {
    need(ckpt, proj_row.key, family);
  }

  if (auto h = heads_from_config(o.config)) c.heads = *h;
  else if (auto h2 = heads_from_config(hf)) c.heads = *h2;
  else c.heads = default_heads(family, c.width, source);
  if (c.heads <= 0 || c.width % c.heads != 0) {
    throw InputError(fmt::format("{}: {} attention heads do not divide the vision width {}", source, c.heads, c.width));
  }
  return c;
}

namespace {

// load_vision over `ckpt`: the blocks' matrices come from their stored quants in a
// stored-quantized checkpoint (stored_vision_quant), else in `o.dtype`, quantized here when
// `o.quant` asks for it.
VisionModel build_vision(const io::Checkpoint& ckpt, const VisionOptions& o) {
  VisionModel m;
  const std::string source = source_name(ckpt);
  require_vision_quant(o.quant, source);  // before any tensor is read
  const auto stored = stored_vision_quant(ckpt);
  m.config = infer_vit_config(ckpt, o);
  const auto& c = m.config;
  const auto& map = key_map(c.family);

  // Reads one tensor with its shape checked against the config; converts to our layout.
  auto read = [&](const std::string& key, const char* spec, Fix fix) -> torch::Tensor {
    if (fix == Fix::ConcatQkv) {
      std::vector<torch::Tensor> parts;
      for (const auto& part : source_keys(key, fix))
        parts.push_back(nn::take(ckpt.tensors, part, shape_of(spec, c), source, o.dtype));
      return torch::cat(parts, 0);
    }
    if (!ckpt.tensors.count(key)) need(ckpt, key, c.family);
    // The frame sum is taken in fp32 so that a bf16 model rounds once, not twice.
    auto t = nn::take(ckpt.tensors, key, shape_of(spec, c), source, fix == Fix::SumFrames ? torch::kFloat32 : o.dtype);
    switch (fix) {
      case Fix::Flatten: return t.reshape({-1, c.width}).squeeze(0);
      case Fix::SumFrames: return (t.select(2, 0) + t.select(2, 1)).to(o.dtype).contiguous();
      case Fix::Transpose: return t.t().contiguous();
      default: return t;
    }
  };
  // A matrix stored quantized: its `.q` and `.scale`, validated against the config's shape (a
  // view of the file, no copy; HF's q, k and v stacked by rows, as the quants are per row).
  auto read_quant = [&](const std::string& key, const char* spec, Fix fix) -> nn::QuantMatrix {
    const auto shape = shape_of(spec, c);
    std::vector<torch::Tensor> qs, scales;
    for (const auto& part : source_keys(key, fix)) {
      const auto& q = need(ckpt, nn::quant_codes_key(part), c.family);
      const auto& scale = need(ckpt, nn::quant_scale_key(part), c.family);
      try {
        auto matrix = nn::quant_matrix_from_tensors(stored, q, scale, shape[0], shape[1], part);
        qs.push_back(matrix.q);
        scales.push_back(matrix.scale);
      } catch (const InputError& e) {
        throw InputError(fmt::format("{}: {}", source, e.what()));
      }
    }
    if (qs.size() == 1) return {stored, qs[0], scales[0]};
    return {stored, torch::cat(qs, 0), torch::cat(scales, 0)};
  };

  for (const auto& r : map.top) {
    if (r.optional && !ckpt.tensors.count(r.key)) continue;
    m.weights.*(r.field) = read(r.key, r.shape, r.fix);
  }
  m.weights.blocks.resize(c.layers);
  for (int64_t i = 0; i < c.layers; ++i) {
    auto& block = m.weights.blocks[i];
    for (const auto& r : map.block) {
      const auto key = block_key(r.key, i);
      if (auto slot = quant_slot(r.field); slot && stored != nn::QuantFormat::None) block.*slot = read_quant(key, r.shape, r.fix);
      else block.*(r.field) = read(key, r.shape, r.fix);
    }
    if (stored == nn::QuantFormat::None)
      nn::quantize_block(block, o.quant, fmt::format("{}: vision block {}", source, i));
  }
  m.quant = stored != nn::QuantFormat::None ? stored : o.quant;
  return m;
}

}  // namespace

nn::QuantFormat stored_vision_quant(const io::Checkpoint& ckpt) {
  const auto it = ckpt.metadata.find(kStoredVisionQuantKey);
  if (it == ckpt.metadata.end()) return nn::QuantFormat::None;
  return parse_vision_quant(it->second, fmt::format("{}: metadata '{}'", source_name(ckpt), kStoredVisionQuantKey));
}

void quantize_vision_tensors(io::Checkpoint& ckpt, const VitConfig& c, nn::QuantFormat format) {
  const std::string source = source_name(ckpt);
  require_vision_quant(format, source);
  if (format == nn::QuantFormat::None || stored_vision_quant(ckpt) != nn::QuantFormat::None) return;
  const auto& map = key_map(c.family);
  for (int64_t i = 0; i < c.layers; ++i) {
    for (const auto& r : map.block) {
      if (!quant_slot(r.field)) continue;
      for (const auto& key : source_keys(block_key(r.key, i), r.fix)) {
        const auto stored_dtype = need(ckpt, key, c.family).scalar_type();
        const auto weight = nn::take(ckpt.tensors, key, shape_of(r.shape, c), source, stored_dtype);
        nn::QuantMatrix matrix;
        try {
          matrix = nn::quantize(weight, format);
        } catch (const InputError& e) {
          throw InputError(fmt::format("{}: tensor '{}': {}", source, key, e.what()));
        }
        io::release_mapped_pages(weight);  // a mapped file's pages, read once (io/mapped_file.h)
        ckpt.tensors.erase(key);
        ckpt.tensors[nn::quant_codes_key(key)] = matrix.q;
        ckpt.tensors[nn::quant_scale_key(key)] = matrix.scale;
      }
    }
  }
  ckpt.metadata[kStoredVisionQuantKey] = nn::quant_format_name(format);
}

VisionModel load_vision(const io::Checkpoint& ckpt, const VisionOptions& o) { return build_vision(ckpt, o); }

VisionKeys vision_keys(const io::Checkpoint& headers, const VisionOptions& o) {
  VisionKeys k{.config = infer_vit_config(headers, o)};
  const auto& map = key_map(k.config.family);
  const bool stored = stored_vision_quant(headers) != nn::QuantFormat::None;
  auto add = [&](const std::string& key, Fix fix, bool quantized) {
    for (const auto& part : source_keys(key, fix)) {
      if (fix == Fix::SumFrames) k.fp32_keys.insert(part);
      if (!quantized) {
        k.keys.insert(part);
        continue;
      }
      for (const auto& stored_key : {nn::quant_codes_key(part), nn::quant_scale_key(part)}) {
        k.keys.insert(stored_key);
        k.stored_keys.insert(stored_key);
      }
    }
  };
  for (const auto& r : map.top) {
    if (!r.optional || headers.tensors.count(r.key)) add(r.key, r.fix, false);
  }
  for (int64_t i = 0; i < k.config.layers; ++i) {
    for (const auto& r : map.block) add(block_key(r.key, i), r.fix, stored && quant_slot(r.field));
  }
  return k;
}

io::Checkpoint read_vision_tensors(const std::filesystem::path& path, const VisionOptions& o, VitConfig* config) {
  const auto headers = io::load_checkpoint(path, {.headers_only = true});
  const auto wanted = vision_keys(headers, o);
  auto ckpt = io::load_checkpoint(path, {.float_dtype = o.dtype, .keys = [&](const std::string& key) {
                                           return (wanted.keys.count(key) && !wanted.fp32_keys.count(key) &&
                                                   !wanted.stored_keys.count(key)) ||
                                                  key == "input_resolution";
                                         }});
  for (const auto* kept : {&wanted.fp32_keys, &wanted.stored_keys}) {
    if (kept->empty()) continue;
    const auto dtype = kept == &wanted.fp32_keys ? std::optional(torch::kFloat32) : std::nullopt;  // else as stored
    auto more = io::load_checkpoint(path, {.float_dtype = dtype, .keys = [&](const std::string& key) { return kept->count(key) > 0; }});
    ckpt.tensors.merge(more.tensors);
  }
  quantize_vision_tensors(ckpt, wanted.config, o.quant);
  if (config) *config = wanted.config;
  return ckpt;
}

VisionModel load_vision(const std::filesystem::path& path, const VisionOptions& o) {
  VitConfig config;
  auto ckpt = std::make_optional(read_vision_tensors(path, o, &config));
  // The family detected on all headers: a filtered map may lack a hint (file name, TorchScript).
  VisionOptions with_family = o;
  with_family.family = config.family;
  auto model = build_vision(*ckpt, with_family);
  ckpt.reset();
  io::release_free_heap();  // the read buffers and any tensor the model did not keep
  return model;
}

nlohmann::json read_config_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw InputError(fmt::format("{}: cannot open config file", path.string()));
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("{}: not valid JSON: {}", path.string(), e.what()));
  }
}

}  // namespace iadgpt::vision
