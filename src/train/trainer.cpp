#include "train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <fmt/format.h>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>

#include "anomaly/detector.h"
#include "data/dataset.h"
#include "data/synthesis.h"
#include "image/decode.h"
#include "image/preprocess.h"
#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "io/splitmix.h"
#include "io/error.h"
#include "llm/chat.h"
#include "llm/model.h"
#include "llm/tokenizer.h"
#include "llm/train_forward.h"
#include "model/bundle.h"
#include "anomaly/apg.h"
#include "model/class_prompts.h"
#include "model/pipeline.h"
#include "model/prompt.h"
#include "train/checkpoints.h"
#include "train/decoder_training.h"
#include "train/losses.h"
#include "vision/vit.h"

namespace iadgpt::train {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kQuestion = "Is there any anomaly in the image?";

uint64_t mix(uint64_t x) { return io::splitmix64(x); }
uint64_t mix(std::initializer_list<uint64_t> parts) {
  uint64_t h = 0x51ED270B27D3A4F1ULL;
  for (auto p : parts) h = mix(h ^ mix(p));
  return h;
}
double unit(uint64_t x) { return static_cast<double>(mix(x) >> 11) * 0x1.0p-53; }

// ---- the example pool ------------------------------------------------------------------------

struct Category {
  std::string name;
  anomaly::TextFeatures text;
  std::string question;  // class description + question (METHOD §1.9)
};

// Frozen inputs of every example, stacked: index i is one (image, answer, mask).
struct Pool {
  std::vector<torch::Tensor> taps;  // per layer [P, 1+N, D_v]
  torch::Tensor embedding;          // [P, D]
  torch::Tensor masks;              // [P, S, S] soft label in [0, 1]
  torch::Tensor few_shot;           // [P, S, S] M_fs from augmented normal references
  std::vector<int64_t> category;
  std::vector<int> label;           // 1 anomalous, 0 normal, -1 instruction example (no Yes/No)
  std::vector<std::string> question;  // instruction examples: their own question (else empty: the category's)
  std::vector<int64_t> original;    // pool index of the example's original (an original: itself)
  std::vector<std::vector<int64_t>> answer_ids;  // tok(answer + "\n###")
  int64_t size() const { return static_cast<int64_t>(label.size()); }
};

struct Frozen {
  FrozenEncoder encoder;
  std::optional<anomaly::Detector> detector;  // text features only
  int64_t size = 224;
};

struct Encoded {
  std::vector<torch::Tensor> taps;  // per layer [n, 1+N, D_v]
  torch::Tensor embedding;          // [n, D]
};

// Appends n encoded views with their masks and few-shot maps [n, S, S] to the pool's tensors (the
// per-example lists are the caller's).
void append_views(Pool& pool, const Encoded& enc, const torch::Tensor& masks, const torch::Tensor& few_shot) {
  auto append = [](torch::Tensor& dst, const torch::Tensor& src) { dst = dst.defined() ? torch::cat({dst, src}) : src; };
  if (pool.taps.empty()) pool.taps.resize(enc.taps.size());
  for (size_t l = 0; l < enc.taps.size(); ++l) append(pool.taps[l], enc.taps[l]);
  append(pool.embedding, enc.embedding);
  append(pool.masks, masks);
  append(pool.few_shot, few_shot);
}

// The question of pool example i: an instruction example's own, else its category's.
const std::string& question_of(const Pool& pool, const std::vector<Category>& cats, int64_t i) {
  return pool.question[i].empty() ? cats[pool.category[i]].question : pool.question[i];
}

Encoded encode(const Frozen& f, const std::vector<cv::Mat>& images) {
  torch::NoGradGuard no_grad;
  Encoded out;
  std::vector<std::vector<torch::Tensor>> per_layer(f.encoder.taps.size());
  std::vector<torch::Tensor> emb;
  for (size_t start = 0; start < images.size(); start += 16) {
    std::vector<torch::Tensor> pixels;
    for (size_t i = start; i < std::min(images.size(), start + 16); ++i)
      pixels.push_back(image::clip_map_view(images[i], static_cast<int>(f.size)));
    const auto& m = f.encoder.model;
    auto o = vision::vit_forward(m.weights, m.config, torch::stack(pixels).to(m.weights.patch_weight.scalar_type()),
                                 f.encoder.taps);
    for (size_t l = 0; l < o.taps.size(); ++l) per_layer[l].push_back(o.taps[l].to(torch::kFloat32));
    emb.push_back(o.embedding.to(torch::kFloat32));
  }
  for (auto& l : per_layer) out.taps.push_back(torch::cat(l));
  out.embedding = torch::cat(emb);
  return out;
}

// A soft synthesis mask at the map side S: bilinear as every map (anomaly::resize_map), kept in [0, 1].
torch::Tensor mask_at(const torch::Tensor& soft, int64_t size) { return anomaly::resize_map(soft, size, size).clamp(0, 1); }

struct Builder {
  const TrainConfig& cfg;
  const Frozen& frozen;
  const llm::Tokenizer& tok;
  std::vector<cv::Mat> textures;

  std::vector<int64_t> answer_ids(const std::string& answer) const { return tok.encode(answer + "\n###"); }

  // Adds (original, No) and per_image × (synthetic, Yes …) for each of `images`; references are
  // `refs` (their taps with rotations form the memory bank; the image itself is excluded).
  data::SynthesisOptions synthesis_options(const std::string& cat_name) const {
    data::SynthesisOptions opt;
    opt.nsa.cls = data::nsa_class(cat_name);
    opt.cutpaste.jitter = 0.5;
    return opt;
  }

  // The map warm-up's views (decoder_training's LabelledView, S×S): each image with an empty mask
  // and `variants` synthetic anomalies of it, masks binarised at 0.3 as the map loss does.
  std::vector<LabelledView> map_views(const std::string& cat_name, const std::vector<cv::Mat>& images,
                                      int64_t variants, uint64_t salt) const {
    const auto method = data::parse_synthesis_method(cfg.synthesis);
    const auto opt = synthesis_options(cat_name);
    const int side = static_cast<int>(frozen.size);
    std::vector<cv::Mat> resized;
    for (const auto& im : images)
      resized.push_back(im.cols == side && im.rows == side ? im : image::resize(im, side, side));
    std::vector<LabelledView> views;
    for (size_t i = 0; i < resized.size(); ++i) {
      views.push_back({resized[i], torch::zeros({frozen.size, frozen.size})});
      std::vector<cv::Mat> others;
      for (size_t o = 0; o < resized.size(); ++o)
        if (o != i) others.push_back(resized[o]);
      for (int64_t v = 0; v < variants; ++v) {
        std::mt19937_64 rng(mix({cfg.seed, salt, i, static_cast<uint64_t>(v)}));
        auto s = data::synthesize(method, resized[i], others, textures, rng, opt);
        views.push_back({s.image, (mask_at(s.soft, frozen.size) > 0.3).to(torch::kFloat32)});
      }
    }
    return views;
  }

  // Few-shot maps [n, S, S] of encoded views: the bank of the references (with 90/180/270°
  // rotations, AnomalyGPT's augmentation) other than the view's own source image (`own[v]`, the
  // pixels it was made from; nullptr: none of them).
  torch::Tensor few_shot_maps(const Encoded& enc, const std::vector<cv::Mat>& refs, const std::vector<const uchar*>& own,
                              const std::string& cat_name) const {
    std::vector<cv::Mat> rotated;
    for (const auto& r : refs)
      for (int k = 0; k < 4; ++k) {
        cv::Mat m;
        if (k == 0) m = r;
        else cv::rotate(r, m, k == 1 ? cv::ROTATE_90_CLOCKWISE : k == 2 ? cv::ROTATE_180 : cv::ROTATE_90_COUNTERCLOCKWISE);
        rotated.push_back(m);
      }
    auto ref_enc = encode(frozen, rotated);
    std::vector<torch::Tensor> few_shot;
    for (size_t v = 0; v < own.size(); ++v) {
      anomaly::MemoryBank bank;
      std::vector<int64_t> keep;
      for (size_t r = 0; r < refs.size(); ++r)
        if (refs[r].data != own[v])
          for (int k = 0; k < 4; ++k) keep.push_back(static_cast<int64_t>(r * 4 + k));
      if (keep.empty()) throw InputError(fmt::format("category '{}': no normal reference besides the image itself", cat_name));
      auto idx = torch::tensor(keep);
      std::vector<torch::Tensor> bank_taps, query;
      for (size_t l = 0; l < ref_enc.taps.size(); ++l) {
        bank_taps.push_back(ref_enc.taps[l].index_select(0, idx));
        query.push_back(enc.taps[l].narrow(0, static_cast<int64_t>(v), 1));
      }
      bank.add(bank_taps);
      few_shot.push_back(bank.query(query, frozen.size).reshape({frozen.size, frozen.size}));
    }
    return torch::stack(few_shot);
  }

  // Labelled parts (config `validation`): each image as it is, its mask and label, the answer its
  // mask gives; few-shot maps against `refs` (the category's references at inference).
  void add_labelled(Pool& pool, int64_t category, const std::string& cat_name, const std::vector<cv::Mat>& images,
                    const std::vector<torch::Tensor>& masks, const std::vector<int>& labels,
                    const std::vector<cv::Mat>& refs) const {
    if (images.empty()) return;
    std::vector<torch::Tensor> soft;
    for (const auto& m : masks) soft.push_back(mask_at(m, frozen.size));
    auto enc = encode(frozen, images);
    append_views(pool, enc, torch::stack(soft), few_shot_maps(enc, refs, std::vector<const uchar*>(images.size()), cat_name));
    for (size_t v = 0; v < images.size(); ++v) {
      pool.question.emplace_back();
      pool.original.push_back(pool.size());
      pool.category.push_back(category);
      pool.label.push_back(labels[v]);
      pool.answer_ids.push_back(answer_ids(labels[v] ? data::answer_for_mask(masks[v]) : "No, there is no anomaly in the image."));
    }
  }

  void add(Pool& pool, int64_t category, const std::string& cat_name, const std::vector<cv::Mat>& images,
           const std::vector<cv::Mat>& others, const std::vector<cv::Mat>& refs, int64_t variants, uint64_t salt) const {
    const auto method = data::parse_synthesis_method(cfg.synthesis);
    const auto opt = synthesis_options(cat_name);
    std::vector<cv::Mat> views;
    std::vector<torch::Tensor> masks;
    std::vector<int> labels;
    std::vector<std::string> answers;
    std::vector<size_t> source;  // which of `images` each view comes from
    std::vector<int64_t> original;  // index in `views` of each view's original
    for (size_t i = 0; i < images.size(); ++i) {
      const auto original_view = static_cast<int64_t>(views.size());
      original.push_back(original_view);
      views.push_back(images[i]);
      masks.push_back(torch::zeros({frozen.size, frozen.size}));
      labels.push_back(0);
      answers.push_back("No, there is no anomaly in the image.");
      source.push_back(i);
      std::vector<cv::Mat> pool_others;
      for (const auto& o : others)
        if (o.data != images[i].data) pool_others.push_back(o);
      for (int64_t v = 0; v < variants; ++v) {
        std::mt19937_64 rng(mix({cfg.seed, salt, static_cast<uint64_t>(category), i, static_cast<uint64_t>(v)}));
        auto s = data::synthesize(method, images[i], pool_others, textures, rng, opt);
        auto pair = data::make_pair(images[i], s);
        views.push_back(pair.synthetic.image);
        masks.push_back(mask_at(pair.synthetic.soft, frozen.size));
        labels.push_back(1);
        answers.push_back(pair.anomaly_answer);
        source.push_back(i);
        original.push_back(original_view);
      }
    }
    auto enc = encode(frozen, views);
    std::vector<const uchar*> own;
    for (size_t v = 0; v < views.size(); ++v) own.push_back(images[source[v]].data);
    append_views(pool, enc, torch::stack(masks), few_shot_maps(enc, refs, own, cat_name));
    const int64_t first = pool.size();
    for (size_t v = 0; v < views.size(); ++v) {
      pool.question.emplace_back();
      pool.original.push_back(first + original[v]);
      pool.category.push_back(category);
      pool.label.push_back(labels[v]);
      pool.answer_ids.push_back(answer_ids(answers[v]));
    }
  }
};

// Instruction examples (config `instructions`): the image, its own question and answer; empty
// mask and few-shot map, label -1 (they teach the LLM to talk, not to decide).
void add_instructions(const Builder& builder, Pool& pool, int64_t category,
                      const std::vector<InstructionConfig::Entry>& entries) {
  std::vector<cv::Mat> images;
  for (const auto& e : entries) images.push_back(image::decode_file(e.image));
  auto enc = encode(builder.frozen, images);
  const int64_t n = static_cast<int64_t>(entries.size()), S = builder.frozen.size;
  append_views(pool, enc, torch::zeros({n, S, S}), torch::zeros({n, S, S}));
  for (const auto& e : entries) {
    pool.original.push_back(pool.size());
    pool.category.push_back(category);
    pool.label.push_back(-1);
    pool.question.push_back(e.question);
    pool.answer_ids.push_back(builder.answer_ids(e.answer));
  }
}

// ---- trainable parts ---------------------------------------------------------------------------

struct Model {
  model::Heads heads;
  llm::LlamaModel llm;
  std::optional<llm::TrainableLora> lora;
  llm::NamedParameters full;

  // Every trainable tensor with a stable name (checkpoint keys).
  std::vector<std::pair<std::string, torch::Tensor>> named() {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (const auto& p : heads.decoder->named_parameters()) out.emplace_back("decoder." + p.key(), p.value());
    for (const auto& p : heads.tge->named_parameters()) out.emplace_back("tge." + p.key(), p.value());
    for (const auto& p : heads.mmf->named_parameters()) out.emplace_back("mmf." + p.key(), p.value());
    auto llm_named = lora ? llm::lora_weights(llm) : full;
    for (size_t i = 0; i < llm_named.names.size(); ++i)
      out.emplace_back((lora ? "lora." : "llm.") + llm_named.names[i], llm_named.tensors[i]);
    return out;
  }
  bool is_llm(const std::string& name) const { return name.rfind("lora.", 0) == 0 || name.rfind("llm.", 0) == 0; }
  bool trains(const std::string& name, int64_t stage) const {
    if (is_llm(name)) return true;
    if (name.rfind("decoder.", 0) == 0) return stage == 2;
    if (name.rfind("tge.", 0) == 0) return stage == 1 || stage == 3;
    if (name.rfind("mmf.", 0) == 0) return stage == 2 || stage == 3;
    return false;
  }
};

// torch.nn defaults (U(±1/√fan_in) for weights and biases), drawn from local generators.
void init_module(torch::nn::Module& m, uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& mod : m.modules(/*include_self=*/true)) {
    auto params = mod->named_parameters(/*recurse=*/false);
    auto w = params.find("weight");
    if (!w || w->dim() < 2) continue;
    const double bound = 1.0 / std::sqrt(static_cast<double>(w->numel() / w->size(0)));
    w->uniform_(-bound, bound, gen);
    if (auto b = params.find("bias")) b->uniform_(-bound, bound, gen);
  }
}

// The MMF for a fresh run (config `mmf_init`). "kaiming": He-uniform convolutions (U(±√(6/fan_in)),
// the bound that keeps the activations' scale through ReLU) with zero biases, and a LeCun-uniform
// cell projection (U(±√(3/fan_in))), so a map's contrast reaches the expert tokens at its own scale.
// With torch's defaults ("torch": U(±1/√fan_in), std 1/√(3·fan_in)) every one of the five conv
// stages shrinks the signal about √6-fold: the expert tokens of a normal and an anomalous part start
// ~200× closer than their maps, and whether the LLM ever learns to read them became a matter of
// luck (the same recipe learned at 2 threads and never at 1, issue 13).
void init_mmf(model::MultiMaskFusion& mmf, const std::string& scheme, uint64_t seed) {
  if (scheme == "torch") return init_module(*mmf, seed);
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& mod : mmf->modules(/*include_self=*/true)) {
    auto params = mod->named_parameters(/*recurse=*/false);
    auto w = params.find("weight");
    if (!w || w->dim() < 2) continue;
    const double fan_in = static_cast<double>(w->numel() / w->size(0));
    const double bound = std::sqrt((w->dim() == 4 ? 6.0 : 3.0) / fan_in);
    w->uniform_(-bound, bound, gen);
    if (auto b = params.find("bias")) b->zero_();
  }
}

// ---- AdamW (PyTorch's formula), state in plain tensors -----------------------------------------

struct Adam {
  std::vector<std::string> names;
  std::vector<torch::Tensor> params, m, v;
  std::vector<bool> is_llm;
  int64_t t = 0;

  void step(double lr_adapters, double lr_llm, const TrainConfig& c) {
    torch::NoGradGuard no_grad;
    ++t;
    const double bc1 = 1 - std::pow(c.beta1, static_cast<double>(t));
    const double bc2 = 1 - std::pow(c.beta2, static_cast<double>(t));
    for (size_t i = 0; i < params.size(); ++i) {
      auto& p = params[i];
      const auto g = p.grad();
      const double lr = is_llm[i] ? lr_llm : lr_adapters;
      p.mul_(1 - lr * c.weight_decay);
      m[i].mul_(c.beta1).add_(g, 1 - c.beta1);
      v[i].mul_(c.beta2).addcmul_(g, g, 1 - c.beta2);
      auto denom = (v[i].sqrt() / std::sqrt(bc2)).add_(c.eps);
      p.addcdiv_(m[i], denom, -lr / bc1);
    }
  }
};

// ---- one batch through heads and LLM -----------------------------------------------------------

struct BatchOut {
  torch::Tensor ce;          // [n] per-example answer CE
  torch::Tensor decision_ce; // [n] CE of the Yes/No token alone (decision_weight > 0), else undefined
  torch::Tensor map_total;   // scalar, mean over the n examples (stage 2), else undefined
  double focal = 0, dice = 0;
  std::vector<int> predicted;  // 1 = "Yes" won over "No" at the first answer position
  torch::Tensor text_map;    // [n, S, S] (eval)
};

struct Runner {
  const TrainConfig& cfg;
  const Pool& pool;
  const std::vector<Category>& cats;
  const llm::Tokenizer& tok;
  Model& model;
  int64_t size;
  int64_t yes_id, no_id;
  int64_t decide;  // answer tokens before the one that says Yes or No
  // Caches of frozen parts (the encoder side never changes; the decoder is frozen in stages 1
  // and 3, the MMF in stage 1): the step then runs only what trains.
  torch::Tensor cached_layer_maps;  // [P, 4, S, S] abnormal channels
  torch::Tensor cached_expert;      // [P, 2, 18, H]: without / with the few-shot map

  void clear_caches() {
    cached_layer_maps = torch::Tensor();
    cached_expert = torch::Tensor();
  }
  void cache_frozen(int64_t stage) {
    clear_caches();
    if (stage == 2) return;
    torch::NoGradGuard g;
    std::vector<torch::Tensor> maps, expert;
    for (int64_t start = 0; start < pool.size(); start += 8) {
      const int64_t n = std::min<int64_t>(8, pool.size() - start);
      std::vector<torch::Tensor> taps;
      for (const auto& t : pool.taps) taps.push_back(t.narrow(0, start, n));
      // Per example: F_text is the example's category's.
      for (int64_t i = 0; i < n; ++i) {
        std::vector<torch::Tensor> one;
        for (const auto& t : taps) one.push_back(t.narrow(0, i, 1));
        auto lm = model.heads.decoder->forward(one, cats[pool.category[start + i]].text.f_text, size);
        std::vector<torch::Tensor> abnormal;
        for (const auto& l : lm.layers) abnormal.push_back(l.select(1, 1));
        maps.push_back(torch::stack(abnormal, 1));
      }
    }
    cached_layer_maps = torch::cat(maps);
    if (stage != 1) return;
    for (int64_t start = 0; start < pool.size(); start += 8) {
      const int64_t n = std::min<int64_t>(8, pool.size() - start);
      auto lm = cached_layer_maps.narrow(0, start, n);
      auto without = model.heads.mmf->forward(model::mask_stack(lm, lm.mean(1), torch::Tensor()));
      auto with = model.heads.mmf->forward(model::mask_stack(lm, lm.mean(1), pool.few_shot.narrow(0, start, n), model.heads.few_shot_alone));
      expert.push_back(torch::stack({without, with}, 1));
    }
    cached_expert = torch::cat(expert);
  }

  // `idx` pool indices; `substitute[j]`: use the few-shot map; dropout seeds per row (empty: no dropout).
  BatchOut run(const std::vector<int64_t>& idx, const std::vector<bool>& substitute, const std::vector<uint64_t>& seeds,
               bool map_loss_on, bool keep_maps) {
    const int64_t n = static_cast<int64_t>(idx.size());
    std::vector<torch::Tensor> image_token(n), expert(n), text_map(n);
    std::vector<std::vector<torch::Tensor>> probs(n);
    // Heads per category (F_text differs), results put back in batch order.
    std::map<int64_t, std::vector<int64_t>> by_cat;
    for (int64_t j = 0; j < n; ++j) by_cat[pool.category[idx[j]]].push_back(j);
    for (const auto& [cat, rows] : by_cat) {
      std::vector<int64_t> pidx;
      for (auto j : rows) pidx.push_back(idx[j]);
      auto it = torch::tensor(pidx);
      std::vector<torch::Tensor> taps;
      for (const auto& t : pool.taps) taps.push_back(t.index_select(0, it));
      auto fs = pool.few_shot.index_select(0, it).clone();
      for (size_t r = 0; r < rows.size(); ++r)
        if (!substitute[rows[r]]) fs[static_cast<int64_t>(r)].zero_();  // no references: zeros, as inference
      model::HeadOutputs out;
      auto e = pool.embedding.index_select(0, it);
      if (cached_layer_maps.defined()) {
        const auto& text = cats[cat].text;
        out.layer_maps = cached_layer_maps.index_select(0, it);
        out.text_map = out.layer_maps.mean(1);
        if (cached_expert.defined()) {
          std::vector<int64_t> flat;
          for (size_t r = 0; r < rows.size(); ++r) flat.push_back(pidx[r] * 2 + (substitute[rows[r]] ? 1 : 0));
          out.expert_tokens = cached_expert.flatten(0, 1).index_select(0, torch::tensor(flat));
        } else {
          out.expert_tokens = model.heads.mmf->forward(model::mask_stack(out.layer_maps, out.text_map, fs, model.heads.few_shot_alone));
        }
        out.image_token = model.heads.tge->forward(e, text.normal_sentences, text.abnormal_sentences, text.f_text);
      } else {
        out = model::run_heads(model.heads, taps, e, fs, cats[cat].text, size);
      }
      for (size_t r = 0; r < rows.size(); ++r) {
        const auto j = rows[r];
        const auto k = static_cast<int64_t>(r);
        image_token[j] = out.image_token[k].unsqueeze(0);
        expert[j] = out.expert_tokens[k];
        if (keep_maps) text_map[j] = out.text_map[k].detach();
        if (map_loss_on)
          for (const auto& lp : out.layer_probs) probs[j].push_back(lp[k]);
      }
    }
    // Sequences: the METHOD §1.9 prompt, then the answer tokens (the only CE targets).
    std::vector<torch::Tensor> xs;
    std::vector<std::vector<int64_t>> labels;
    std::vector<int64_t> answer_start;
    int64_t T = 0;
    for (int64_t j = 0; j < n; ++j) {
      auto segs = model::anomalygpt_prompt(tok, image_token[j], expert[j], {}, question_of(pool, cats, idx[j]));
      const auto& ans = pool.answer_ids[idx[j]];
      segs.push_back(llm::Segment::tokens(ans));
      auto x = llm::embed_segments(model.llm, segs);
      const int64_t len = x.size(0), prompt = len - static_cast<int64_t>(ans.size());
      std::vector<int64_t> lab(len, llm::kIgnoreIndex);
      std::copy(ans.begin(), ans.end(), lab.begin() + prompt);
      xs.push_back(x);
      labels.push_back(std::move(lab));
      answer_start.push_back(prompt);
      T = std::max(T, len);
    }
    const int64_t H = model.llm.config.hidden_size;
    std::vector<torch::Tensor> padded;
    auto mask = torch::zeros({n, T}, torch::kInt64);
    auto lab = torch::full({n, T}, llm::kIgnoreIndex, torch::kInt64);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t len = xs[j].size(0);
      padded.push_back(len < T ? torch::cat({xs[j], torch::zeros({T - len, H})}) : xs[j]);
      mask[j].narrow(0, 0, len).fill_(1);
      lab[j].narrow(0, 0, len).copy_(torch::tensor(labels[j]));
    }
    llm::TrainForwardOptions fo;
    if (!seeds.empty() && model.lora) {
      fo.lora_dropout = model.lora->spec.dropout;
      fo.dropout_seeds = seeds;
    }
    auto logits = llm::forward_train(model.llm, torch::stack(padded), mask, fo);
    BatchOut out;
    out.ce = llm::answer_cross_entropy(logits, lab);
    if (cfg.decision_weight > 0) {
      // The token that says Yes or No, once more on its own (full-vocabulary CE): within the mean
      // over an answer of ~30 tokens it would otherwise weigh 1/30 of the example.
      std::vector<torch::Tensor> rows;
      std::vector<int64_t> targets;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t at = answer_start[j] + decide;
        rows.push_back(logits[j][at - 1]);
        targets.push_back(lab[j][at].item<int64_t>());
      }
      out.decision_ce = torch::nn::functional::cross_entropy(
          torch::stack(rows), torch::tensor(targets),
          torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    }
    {
      torch::NoGradGuard g;
      for (int64_t j = 0; j < n; ++j) {
        auto row = logits[j][answer_start[j] - 1 + decide];
        out.predicted.push_back(row[yes_id].item<float>() > row[no_id].item<float>() ? 1 : 0);
      }
    }
    if (map_loss_on) {
      std::vector<torch::Tensor> layers;
      for (size_t l = 0; l < probs[0].size(); ++l) {
        std::vector<torch::Tensor> rows;
        for (int64_t j = 0; j < n; ++j) rows.push_back(probs[j][l]);
        layers.push_back(torch::stack(rows));
      }
      std::vector<torch::Tensor> m;
      for (auto i : idx) m.push_back(pool.masks[i]);
      auto ml = map_loss(layers, binarize_mask(torch::stack(m)));
      out.map_total = ml.total;
      out.focal = ml.focal.item<double>();
      out.dice = ml.dice.item<double>();
    }
    if (keep_maps) out.text_map = torch::stack(text_map);
    return out;
  }
};

// ---- helpers ------------------------------------------------------------------------------------

// CPU autocast for one step's forward and backward (config `bf16_autocast`): matmuls and convs in
// bf16 (oneDNN), reductions and the optimiser in fp32 on fp32 weights. Off: nothing changes.
class CpuAutocast {
 public:
  explicit CpuAutocast(bool on) : on_(on) {
    if (!on_) return;
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(true);
    at::autocast::increment_nesting();
  }
  ~CpuAutocast() {
    if (!on_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_cpu_enabled(false);
  }
  CpuAutocast(const CpuAutocast&) = delete;
  CpuAutocast& operator=(const CpuAutocast&) = delete;

 private:
  bool on_;
};

// The map warm-up (config `map_warmup`): one decoder for every category, each view against its
// own category's F_text, trained from the training images only (never the held-out ones).
DecoderTrainingResult warm_up_decoder(const TrainConfig& cfg, const Builder& builder, const std::vector<Category>& cats,
                                      const std::vector<std::vector<cv::Mat>>& images, uint64_t seed) {
  std::vector<LabelledView> views;
  std::vector<int64_t> text_index;
  std::vector<torch::Tensor> texts;
  for (size_t c = 0; c < images.size(); ++c) {  // the dataset categories (not the instructions')
    auto v = builder.map_views(cats[c].name, images[c], cfg.map_warmup.per_image, mix({seed, c}));
    text_index.insert(text_index.end(), v.size(), static_cast<int64_t>(c));
    views.insert(views.end(), std::make_move_iterator(v.begin()), std::make_move_iterator(v.end()));
    texts.push_back(cats[c].text.f_text.to(torch::kFloat32));
  }
  auto pool = encode_views(views, builder.frozen.encoder);
  views.clear();
  pool.text_index = std::move(text_index);
  DecoderTrainingOptions opt{.steps = cfg.map_warmup.steps, .batch_size = cfg.map_warmup.batch_size,
                             .lr = cfg.map_warmup.lr, .seed = seed, .log_every = std::max<int64_t>(1, cfg.map_warmup.steps / 10),
                             .loss_size = cfg.map_warmup.loss_size};
  return train_decoder(pool, torch::stack(texts), opt);
}

// Pool indices of one epoch: every synthetic example once, every original once per synthetic
// example made from it (pool order; per_image 1 gives the pool itself).
std::vector<int64_t> balanced_items(const Pool& pool) {
  std::vector<int64_t> variants(pool.size(), 0);
  for (int64_t i = 0; i < pool.size(); ++i)
    if (pool.label[i] == 1) ++variants[pool.original[i]];
  std::vector<int64_t> items;
  for (int64_t i = 0; i < pool.size(); ++i)
    if (pool.label[i] >= 0)  // instruction examples are drawn separately (`instructions.share`)
      for (int64_t r = 0; r < (pool.label[i] == 1 ? 1 : std::max<int64_t>(variants[i], 1)); ++r) items.push_back(i);
  return items;
}

// Yes/No accuracy over (original, synthetic) pairs: each pair scores the mean of its two
// answers, so the originals weigh as much as the anomalies whatever `eval_per_image`.
double pair_accuracy(const Pool& pool, const std::vector<int>& predicted) {
  double sum = 0;
  int64_t pairs = 0;
  for (int64_t i = 0; i < pool.size(); ++i) {
    if (pool.label[i] != 1) continue;
    const auto o = pool.original[i];
    sum += 0.5 * ((predicted[i] == 1 ? 1.0 : 0.0) + (predicted[o] == 0 ? 1.0 : 0.0));
    ++pairs;
  }
  return pairs > 0 ? sum / static_cast<double>(pairs) : 0.0;
}

std::vector<cv::Mat> load_textures(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    auto ext = e.path().extension().string();
    for (auto& ch : ext) ch = static_cast<char>(std::tolower(ch));
    if (e.is_regular_file() && (ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp")) files.push_back(e.path());
  }
  if (files.empty()) throw InputError(fmt::format("textures: no image files under {}", dir.string()));
  std::sort(files.begin(), files.end());
  if (files.size() > 64) files.resize(64);  // bounded memory; sorted, so the same set every run
  std::vector<cv::Mat> out;
  for (const auto& f : files) out.push_back(image::decode_file(f));
  return out;
}

// Truncates the JSONL log to entries at or before `step` (a resumed run rewrites what follows).
void truncate_log(const fs::path& log, int64_t step) {
  if (!fs::exists(log)) return;
  std::ifstream in(log);
  std::ostringstream kept;
  std::string line;
  while (std::getline(in, line)) {
    try {
      auto j = nlohmann::json::parse(line);
      if (j.value("step", int64_t{0}) <= step) kept << line << "\n";
    } catch (const std::exception&) {
      // a torn last line from a kill: dropped
    }
  }
  io::write_file_atomic(log, kept.str());
}

void save_owned(const fs::path& path, const io::TensorMap& tensors) {
  io::write_file_atomic(path, io::serialize_safetensors(tensors, {{"format", "pt"}}));
}

}  // namespace

nlohmann::json EvalResult::to_json() const {
  return {{"event", "eval"}, {"step", step}, {"examples", examples}, {"pairs", pairs},
          {"yes_no_accuracy", yes_no_accuracy}, {"yes_no_accuracy_few_shot", yes_no_accuracy_few_shot},
          {"yes_on_normal", yes_on_normal}, {"yes_on_anomalous", yes_on_anomalous}, {"ce", ce},
          {"pixel_auroc", pixel_auroc}, {"image_auroc", image_auroc}, {"validation_parts", validation_parts},
          {"validation_accuracy", validation_accuracy}, {"validation_accuracy_few_shot", validation_accuracy_few_shot}};
}

TrainResult train(const TrainConfig& cfg, Distributed& dist, const TrainHooks& hooks) {
  const auto t0 = Clock::now();
  auto say = [&](const std::string& m) {
    if (hooks.on_message && dist.is_main()) hooks.on_message(m);
  };
  const int64_t W = dist.world_size();
  if (cfg.batch_size % (W * cfg.grad_accum) != 0)
    throw InputError(fmt::format("{}: 'batch_size' {} must be a multiple of world size × grad_accum = {}",
                                 cfg.source.string(), cfg.batch_size, W * cfg.grad_accum));

  // Frozen parts.
  Frozen frozen{load_encoder(cfg.vision, cfg.vision_config, cfg.taps), std::nullopt, cfg.image_size};
  if (frozen.encoder.taps.size() != 4)
    throw InputError(fmt::format("{}: the multi-mask fusion needs 4 tapped layers, the encoder gives {}",
                                 cfg.source.string(), frozen.encoder.taps.size()));
  anomaly::DetectorOptions dopt;
  dopt.vision = cfg.vision;
  dopt.vision_model = frozen.encoder.model;  // the checkpoint is read once
  dopt.text = cfg.text;
  dopt.vocab = cfg.vocab;
  dopt.config = cfg.vision_config;
  dopt.taps = frozen.encoder.taps;
  dopt.size = cfg.image_size;
  frozen.detector.emplace(dopt);
  auto tok = llm::Tokenizer::from_path(cfg.tokenizer.value_or(cfg.llm));
  const auto decision = model::decision_tokens(tok);  // the token that says Yes or No, after its forced prefix
  const auto decide = static_cast<int64_t>(decision.prefix.size());

  const int64_t llm_max_positions = llm::LlamaConfig::from_file(cfg.llm / "config.json").max_position_embeddings;
  // Pool (every rank builds the same one: deterministic, and tiny next to training).
  Builder builder{cfg, frozen, tok, {}};
  if (cfg.synthesis == "perlin") builder.textures = load_textures(*cfg.textures);
  std::vector<Category> cats;
  std::vector<std::vector<cv::Mat>> train_images;  // per category (the map warm-up's)
  Pool train_pool, eval_pool, val_pool;
  std::map<std::string, std::pair<int64_t, std::vector<cv::Mat>>> inference_refs;  // category → (index, references)
  for (const auto& ds : cfg.datasets) {
    const auto kind = data::parse_kind(ds.kind);
    for (const auto& name : ds.categories) {
      std::vector<cv::Mat> normals;
      for (const auto& s : data::list_samples(kind, ds.root, name))
        if (s.split == data::Split::Train && s.label == 0) normals.push_back(image::decode_file(s.image));
      const auto n_hold = std::min<int64_t>(cfg.holdout, static_cast<int64_t>(normals.size()) - 2);
      std::vector<cv::Mat> train_imgs(normals.begin(), normals.end() - n_hold), held(normals.end() - n_hold, normals.end());
      std::vector<cv::Mat> refs(train_imgs.begin(), train_imgs.begin() + std::min<int64_t>(cfg.references + 1, train_imgs.size()));
      // APG as inference uses it for an MMF bundle (model::IadGpt::set_class): the built-in
      // library's sentences join the abnormal side of F_text, its keywords the description.
      const auto apg = model::find_class_prompts(model::Bundle{}, name);
      frozen.detector->set_extra_abnormal(apg ? apg->sentences : std::vector<std::string>{});
      frozen.detector->set_class(name);
      Category c{name, frozen.detector->text_features(), model::class_question(name, apg ? &*apg : nullptr, kQuestion)};
      cats.push_back(c);
      train_images.push_back(train_imgs);
      const auto ci = static_cast<int64_t>(cats.size() - 1);
      // The few-shot bank: `references` images (one more listed so the view's own image can be left out).
      builder.add(train_pool, ci, name, train_imgs, train_imgs, refs, cfg.per_image, 1);
      // Inference's references: the first `references` training images.
      std::vector<cv::Mat> eval_refs(refs.begin(), refs.begin() + std::min<int64_t>(cfg.references, refs.size()));
      if (!held.empty()) builder.add(eval_pool, ci, name, held, train_imgs, eval_refs, cfg.eval_per_image, 2);
      inference_refs.try_emplace(name, ci, eval_refs);
    }
  }
  if (cfg.validation) {  // real labelled parts, never trained on (config `validation`)
    const auto kind = data::parse_kind(cfg.validation->kind);
    for (const auto& name : cfg.validation->categories) {
      std::vector<cv::Mat> images;
      std::vector<torch::Tensor> masks;
      std::vector<int> labels;
      for (const auto& s : data::list_samples(kind, cfg.validation->root, name)) {
        if (s.split != data::Split::Test) continue;
        images.push_back(image::decode_file(s.image));
        masks.push_back((data::sample_mask(s, images.back().rows, images.back().cols) > 0).to(torch::kFloat32));
        labels.push_back(s.label ? 1 : 0);
      }
      const auto& [ci, refs] = inference_refs.at(name);
      builder.add_labelled(val_pool, ci, name, images, masks, labels, refs);
    }
  }
  std::vector<int64_t> instruction_items;  // pool indices of the instruction examples
  if (cfg.instructions) {
    frozen.detector->set_extra_abnormal({});
    frozen.detector->set_class("object");
    cats.push_back(Category{"object", frozen.detector->text_features(), ""});
    const int64_t first = train_pool.size();
    add_instructions(builder, train_pool, static_cast<int64_t>(cats.size() - 1), cfg.instructions->entries);
    for (int64_t i = first; i < train_pool.size(); ++i) instruction_items.push_back(i);
  }
  // Every prompt + answer must fit the LLM's context (checked now, not mid-run).
  for (const Pool* p : {&train_pool, &eval_pool, &val_pool})
    for (int64_t i = 0; i < p->size(); ++i) {
      const auto& c = cats[p->category[i]];
      const auto& question = question_of(*p, cats, i);
      const int64_t len = static_cast<int64_t>(tok.encode("### Human: <Img>", true).size() + 1 + tok.encode("</Img> ").size() +
                                               18 + tok.encode(question + "\n### Assistant:").size() +
                                               p->answer_ids[i].size());
      if (len > llm_max_positions)
        throw InputError(fmt::format("{}: a '{}' example needs {} positions (prompt + answer), the LLM has {}; "
                                     "use fewer/larger synthetic regions or a longer-context LLM",
                                     cfg.source.string(), c.name, len, llm_max_positions));
    }
  say(fmt::format("pool: {} training examples ({} instruction), {} held-out, {} validation parts, {} categories",
                  train_pool.size(), instruction_items.size(), eval_pool.size(), val_pool.size(), train_images.size()));

  // Trainable parts (fixed seeds; a resume overwrites them from the checkpoint).
  Model m;
  const int64_t D = train_pool.embedding.size(1), Dv = frozen.encoder.width();
  m.llm = llm::load_model(cfg.llm);
  const int64_t H = m.llm.config.hidden_size;
  m.heads.decoder = initial_decoder(Dv, D, 4, mix({cfg.seed, 11}));
  m.heads.tge = model::TextGuidedEnhancer(D, H);
  init_module(*m.heads.tge->llama_proj, mix({cfg.seed, 12}));
  m.heads.mmf = model::MultiMaskFusion(H);
  m.heads.few_shot_alone = cfg.map == "few-shot";
  init_mmf(m.heads.mmf, cfg.mmf_init, mix({cfg.seed, 13}));
  {
    torch::NoGradGuard g;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(mix({cfg.seed, 14}));
    m.heads.mmf->base_tokens.normal_(0, 1, gen);
  }
  if (cfg.llm_tuning == "lora") m.lora = llm::add_trainable_lora(m.llm, cfg.lora, mix({cfg.seed, 15}));
  else if (cfg.llm_tuning == "full") m.full = llm::make_trainable(m.llm);
  auto named = m.named();

  // Resume.
  CheckpointStore store(cfg.out / "checkpoints", cfg.keep);
  const auto config_text = cfg.to_json().dump();
  int64_t stage_index = 0, stage_step = 0, global = 0;
  std::optional<LoadedCheckpoint> resume;
  if (cfg.resume) resume = store.latest();
  TrainResult result;
  if (resume) {
    if (resume->metadata["config"] != config_text)
      throw InputError(fmt::format("{}: written by a run with another configuration (delete it or set \"resume\": false)",
                                   resume->path.string()));
    torch::NoGradGuard g;
    for (auto& [name, t] : named) {
      auto it = resume->tensors.find("param." + name);
      if (it == resume->tensors.end()) throw InputError(fmt::format("{}: no tensor 'param.{}'", resume->path.string(), name));
      t.copy_(it->second);
    }
    stage_index = std::stoll(resume->metadata["stage_index"]);
    stage_step = std::stoll(resume->metadata["stage_step"]);
    global = std::stoll(resume->metadata["global_step"]);
    result.resumed_from = global;
    say(fmt::format("resumed from {} (step {}, stage {} step {})", resume->path.string(), global,
                    stage_index < static_cast<int64_t>(cfg.stages.size()) ? cfg.stages[stage_index].stage : 0, stage_step));
  }
  if (!resume && cfg.map_warmup.steps > 0) {  // a checkpoint already holds the warmed decoder
    const auto tw = Clock::now();
    auto warmed = warm_up_decoder(cfg, builder, cats, train_images, mix({cfg.seed, 16}));
    torch::NoGradGuard g;
    auto from = warmed.decoder->named_parameters();
    for (auto& p : m.heads.decoder->named_parameters()) p.value().copy_(from[p.key()]);
    say(fmt::format("map warm-up: {} steps, loss {:.4f} -> {:.4f} ({:.1f} s)", cfg.map_warmup.steps,
                    warmed.log.front().loss, warmed.log.back().loss,
                    std::chrono::duration<double>(Clock::now() - tw).count()));
  }
  const fs::path log_path = cfg.out / "train.jsonl";
  if (dist.is_main()) {
    fs::create_directories(cfg.out);
    if (resume) truncate_log(log_path, global);
    else if (fs::exists(log_path)) fs::remove(log_path);
  }
  std::ofstream log;
  if (dist.is_main()) log.open(log_path, std::ios::app);

  int64_t total_steps = 0;
  for (const auto& s : cfg.stages) total_steps += s.steps;
  Runner runner{cfg, train_pool, cats, tok, m, cfg.image_size, decision.yes, decision.no, decide};
  Runner eval_runner{cfg, eval_pool, cats, tok, m, cfg.image_size, decision.yes, decision.no, decide};
  Runner val_runner{cfg, val_pool, cats, tok, m, cfg.image_size, decision.yes, decision.no, decide};

  // Held-out pairs, self-supervised (M_fs channel zero, as inference without references) and
  // few-shot (the references' M_fs in the MMF input, as inference with --reference).
  auto evaluate_pairs = [&](EvalResult& r) {
    std::vector<torch::Tensor> maps;
    std::vector<int> predicted, predicted_fs;
    double ce = 0;
    for (int64_t start = 0; start < eval_pool.size(); start += 8) {
      std::vector<int64_t> idx;
      for (int64_t i = start; i < std::min(eval_pool.size(), start + 8); ++i) idx.push_back(i);
      auto o = eval_runner.run(idx, std::vector<bool>(idx.size(), false), {}, false, true);
      auto f = eval_runner.run(idx, std::vector<bool>(idx.size(), true), {}, false, false);
      predicted.insert(predicted.end(), o.predicted.begin(), o.predicted.end());
      predicted_fs.insert(predicted_fs.end(), f.predicted.begin(), f.predicted.end());
      ce += o.ce.sum().item<double>();
      maps.push_back(o.text_map);
    }
    r.examples = eval_pool.size();
    r.pairs = std::count(eval_pool.label.begin(), eval_pool.label.end(), 1);
    r.yes_no_accuracy = pair_accuracy(eval_pool, predicted);
    r.yes_no_accuracy_few_shot = pair_accuracy(eval_pool, predicted_fs);
    for (int64_t i = 0; i < eval_pool.size(); ++i) (eval_pool.label[i] == 1 ? r.yes_on_anomalous : r.yes_on_normal) += predicted[i];
    r.yes_on_anomalous /= std::max<double>(1.0, static_cast<double>(r.pairs));
    r.yes_on_normal /= std::max<double>(1.0, static_cast<double>(r.examples - r.pairs));
    r.ce = ce / static_cast<double>(r.examples);
    auto all_maps = torch::cat(maps);
    auto masks = binarize_mask(eval_pool.masks);
    r.pixel_auroc = masks.sum().item<double>() > 0 ? pixel_auroc(all_maps, masks) : 0.0;
    // The map's own image-level separation (score = max M_text), next to what the LLM answers.
    auto labels = torch::tensor(std::vector<int64_t>(eval_pool.label.begin(), eval_pool.label.end())).to(torch::kFloat32);
    if (r.pairs > 0 && r.pairs < r.examples) r.image_auroc = pixel_auroc(all_maps.amax({1, 2}), labels);
  };
  auto evaluate = [&](int64_t at_step) {
    EvalResult r;
    r.step = at_step;
    torch::NoGradGuard g;
    if (eval_pool.size() > 0) evaluate_pairs(r);
    // The labelled validation parts: the share of right answers, as the demo counts them.
    r.validation_parts = val_pool.size();
    for (int64_t start = 0; start < val_pool.size(); start += 8) {
      std::vector<int64_t> idx;
      for (int64_t i = start; i < std::min(val_pool.size(), start + 8); ++i) idx.push_back(i);
      auto o = val_runner.run(idx, std::vector<bool>(idx.size(), false), {}, false, false);
      auto f = val_runner.run(idx, std::vector<bool>(idx.size(), true), {}, false, false);
      for (size_t j = 0; j < idx.size(); ++j) {
        r.validation_accuracy += o.predicted[j] == val_pool.label[idx[j]];
        r.validation_accuracy_few_shot += f.predicted[j] == val_pool.label[idx[j]];
      }
    }
    if (r.validation_parts > 0) {
      r.validation_accuracy /= static_cast<double>(r.validation_parts);
      r.validation_accuracy_few_shot /= static_cast<double>(r.validation_parts);
    }
    return r;
  };

  auto save_checkpoint = [&](const Adam* adam) {
    if (!dist.is_main()) return;
    io::TensorMap tensors;
    for (auto& [name, t] : named) tensors.emplace("param." + name, t.detach().clone());
    if (adam)
      for (size_t i = 0; i < adam->params.size(); ++i) {
        tensors.emplace("adam.m." + adam->names[i], adam->m[i].clone());
        tensors.emplace("adam.v." + adam->names[i], adam->v[i].clone());
      }
    store.save(global, tensors,
               {{"config", config_text}, {"stage_index", std::to_string(stage_index)},
                {"stage_step", std::to_string(stage_step)}, {"global_step", std::to_string(global)},
                {"adam_t", std::to_string(adam ? adam->t : 0)}},
               hooks.checkpoint_write_hook);
  };

  const int64_t local_batch = cfg.batch_size / W;
  bool stop = false;
  for (; stage_index < static_cast<int64_t>(cfg.stages.size()) && !stop; ++stage_index, stage_step = 0) {
    const auto& st = cfg.stages[stage_index];
    // Freeze what the stage does not train (no gradient buffers, no autograd graph for them).
    Adam adam;
    for (auto& [name, t] : named) {
      const bool on = m.trains(name, st.stage) && (st.llm || !m.is_llm(name));
      t.requires_grad_(on);
      if (on) {
        adam.names.push_back(name);
        adam.params.push_back(t);
        adam.is_llm.push_back(m.is_llm(name));
        adam.m.push_back(torch::zeros_like(t));
        adam.v.push_back(torch::zeros_like(t));
      }
    }
    runner.cache_frozen(st.stage);
    if (stage_step > 0 && resume) {
      for (size_t i = 0; i < adam.params.size(); ++i) {
        adam.m[i] = resume->tensors.at("adam.m." + adam.names[i]).clone();
        adam.v[i] = resume->tensors.at("adam.v." + adam.names[i]).clone();
      }
      adam.t = std::stoll(resume->metadata["adam_t"]);
    }
    // Data order: one permutation per epoch of the stage, from (seed, stage index, epoch). An
    // epoch visits every (original, synthetic) pair, so each original comes once per synthetic
    // variant: "Yes" and "No" are equally frequent whatever `per_image` (with more "Yes" the LLM
    // first learns to answer "Yes" to everything, and the decision never leaves that prior).
    const auto epoch_items = balanced_items(train_pool);
    const auto epoch_size = static_cast<int64_t>(epoch_items.size());
    std::map<int64_t, std::vector<int64_t>> perms;
    auto example_at = [&](int64_t k) {
      const int64_t epoch = k / epoch_size;
      auto& perm = perms[epoch];
      if (perm.empty()) {
        perm = epoch_items;
        std::mt19937_64 rng(mix({cfg.seed, 21, static_cast<uint64_t>(stage_index), static_cast<uint64_t>(epoch)}));
        for (int64_t i = epoch_size - 1; i > 0; --i)
          std::swap(perm[i], perm[static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1))]);
      }
      return perm[k % epoch_size];
    };

    for (; stage_step < st.steps; ) {
      const auto ts = Clock::now();
      // Gradients example by example (forward values never depend on which examples share a
      // batch), summed as a balanced binary tree over the global batch. A rank's share is a
      // subtree, so two ranks (Gloo adds the two halves; a + b is commutative) reproduce the
      // single-process sum bit for bit — AdamW would otherwise amplify summation-order noise in
      // near-zero gradients far beyond 1e-5.
      std::function<torch::Tensor(int64_t, int64_t)> tree = [&](int64_t lo, int64_t hi) -> torch::Tensor {
        if (hi - lo > 1) {
          const int64_t mid = lo + (hi - lo) / 2;
          return tree(lo, mid) + tree(mid, hi);
        }
        const int64_t g_index = lo;  // index in the global batch
        const uint64_t ex = mix({cfg.seed, 31, static_cast<uint64_t>(stage_index), static_cast<uint64_t>(stage_step),
                                 static_cast<uint64_t>(g_index)});
        // With probability `instructions.share` the slot takes an instruction example instead.
        const bool instruction = !instruction_items.empty() && unit(ex ^ 3) < cfg.instructions->share;
        const int64_t example = instruction ? instruction_items[mix(ex ^ 4) % instruction_items.size()]
                                            : example_at(stage_step * cfg.batch_size + g_index);
        const bool labelled = train_pool.label[example] >= 0;
        BatchOut o;
        {
          CpuAutocast autocast(cfg.bf16_autocast);
          o = runner.run({example}, {labelled && unit(ex ^ 1) < cfg.few_shot_probability}, {mix(ex ^ 2)},
                         st.stage == 2 && labelled, false);
          auto loss = o.ce.sum().to(torch::kFloat32) / static_cast<double>(cfg.batch_size);
          if (o.decision_ce.defined() && labelled)
            loss = loss + o.decision_ce.sum().to(torch::kFloat32) * (cfg.decision_weight / static_cast<double>(cfg.batch_size));
          if (o.map_total.defined()) loss = loss + o.map_total.to(torch::kFloat32) / static_cast<double>(cfg.batch_size);
          loss.backward();
        }
        std::vector<torch::Tensor> parts;
        for (auto& p : adam.params) {
          parts.push_back(p.grad().defined() ? p.grad().reshape({-1}).clone() : torch::zeros({p.numel()}));
          p.mutable_grad().reset();
        }
        parts.push_back(torch::tensor({o.ce.sum().item<double>(), o.focal, o.dice,
                                       labelled && o.predicted[0] == train_pool.label[example] ? 1.0 : 0.0,
                                       labelled ? 1.0 : 0.0, instruction ? 1.0 : 0.0, 0.0},
                                      torch::kFloat32));
        return torch::cat(parts);
      };
      auto flat = tree(dist.rank() * local_batch, (dist.rank() + 1) * local_batch);
      // One all-reduce for every gradient plus the step's statistics and the stop flag.
      const bool want_stop = (hooks.stop && hooks.stop->load()) ||
                             (cfg.stop_after > 0 && global + 1 >= cfg.stop_after);
      if (want_stop) flat[flat.size(0) - 1] += 1.0;
      dist.all_reduce_sum(flat);
      int64_t off = 0;
      for (auto& p : adam.params) {
        p.mutable_grad() = flat.narrow(0, off, p.numel()).view_as(p).clone();
        off += p.numel();
      }
      auto stats = flat.narrow(0, off, 7);  // ce, focal, dice, correct, labelled, instruction, stop
      // Clip by the global norm (torch.nn.utils.clip_grad_norm_: coefficient clip / (norm + 1e-6)).
      double norm2 = 0;
      for (auto& p : adam.params) norm2 += p.grad().pow(2).sum().item<double>();
      const double norm = std::sqrt(norm2);
      if (cfg.clip > 0 && norm > cfg.clip) {
        torch::NoGradGuard g;
        const double coef = cfg.clip / (norm + 1e-6);
        for (auto& p : adam.params) p.mutable_grad().mul_(coef);
      }
      const double sched = learning_rate(stage_step, st.steps, 1.0, cfg.warmup);
      adam.step(st.lr * sched, cfg.llm_lr * sched, cfg);
      for (auto& p : adam.params) p.mutable_grad().reset();
      ++stage_step;
      ++global;

      StepLog sl;
      sl.step = global;
      sl.total_steps = total_steps;
      sl.stage = st.stage;
      sl.stage_step = stage_step;
      const double B = static_cast<double>(cfg.batch_size);
      sl.ce = stats[0].item<double>() / B;
      sl.focal = stats[1].item<double>() / B;
      sl.dice = stats[2].item<double>() / B;
      sl.accuracy = stats[3].item<double>() / std::max(1.0, stats[4].item<double>());
      sl.instructions = static_cast<int64_t>(stats[5].item<double>());
      sl.loss = sl.ce + (st.stage == 2 ? sl.focal + sl.dice : 0.0);
      sl.lr = st.lr * sched;
      sl.grad_norm = norm;
      sl.seconds = std::chrono::duration<double>(Clock::now() - ts).count();
      if (dist.is_main()) {
        log << nlohmann::json{{"step", sl.step}, {"stage", sl.stage}, {"stage_step", sl.stage_step}, {"loss", sl.loss},
                              {"ce", sl.ce}, {"focal", sl.focal}, {"dice", sl.dice}, {"accuracy", sl.accuracy},
                              {"instructions", sl.instructions},
                              {"lr", sl.lr}, {"grad_norm", sl.grad_norm}, {"seconds", sl.seconds}}
                   .dump()
            << "\n";
        log.flush();
        if (hooks.on_step) hooks.on_step(sl);
      }
      stop = stats[6].item<double>() > 0;
      const bool stage_done = stage_step == st.steps;
      if (cfg.eval_every > 0 && global % cfg.eval_every == 0 && dist.is_main()) {
        auto r = evaluate(global);
        log << r.to_json().dump() << "\n";
        log.flush();
        if (hooks.on_eval) hooks.on_eval(r);
      }
      if (stage_done) {
        // The next stage starts with fresh AdamW moments: the checkpoint points at it.
        ++stage_index;
        stage_step = 0;
        save_checkpoint(nullptr);
        --stage_index;
        break;  // the outer loop moves to the next stage (or ends on `stop`)
      }
      if (stop || (cfg.checkpoint_every > 0 && global % cfg.checkpoint_every == 0)) save_checkpoint(&adam);
      if (stop) break;
    }
  }
  result.steps_done = global;
  result.interrupted = stop && global < total_steps;
  for (auto& [name, t] : named) t.requires_grad_(false);

  if (!result.interrupted && dist.is_main()) {
    result.final_eval = evaluate(global);
    log << result.final_eval.to_json().dump() << "\n";
    log.flush();
    if (hooks.on_eval) hooks.on_eval(result.final_eval);
    // The bundle: adapters as safetensors, the LLM's LoRA as a PEFT dir (or the full weights).
    model::Bundle b;
    b.dir = fs::absolute(cfg.out);
    b.vision = fs::absolute(cfg.vision);
    if (cfg.text) b.text = fs::absolute(*cfg.text);
    if (cfg.vocab) b.vocab = fs::absolute(*cfg.vocab);
    b.vision_config = cfg.vision_config;
    b.llm = fs::absolute(cfg.llm);
    if (cfg.tokenizer) b.tokenizer = fs::absolute(*cfg.tokenizer);
    save_owned(b.dir / "decoder.safetensors", anomaly::decoder_tensors(m.heads.decoder));
    save_owned(b.dir / "tge.safetensors", model::parameter_tensors(*m.heads.tge));
    save_owned(b.dir / "mmf.safetensors", model::parameter_tensors(*m.heads.mmf));
    b.decoder = b.dir / "decoder.safetensors";
    b.tge = b.dir / "tge.safetensors";
    b.mmf = b.dir / "mmf.safetensors";
    if (m.lora) {
      llm::save_peft_adapter(m.llm, cfg.lora, b.dir / "lora");
      b.lora = b.dir / "lora";
    } else if (cfg.llm_tuning == "full") {
      const auto dir = b.dir / "llm";
      fs::create_directories(dir);
      fs::copy_file(cfg.llm / "config.json", dir / "config.json", fs::copy_options::overwrite_existing);
      if (fs::exists(cfg.llm / "tokenizer.model"))
        fs::copy_file(cfg.llm / "tokenizer.model", dir / "tokenizer.model", fs::copy_options::overwrite_existing);
      auto w = llm::named_weights(m.llm);
      io::TensorMap t;
      for (size_t i = 0; i < w.names.size(); ++i) t.emplace(w.names[i], w.tensors[i].detach().contiguous());
      save_owned(dir / "model.safetensors", t);
      b.llm = dir;
    }
    b.taps = frozen.encoder.taps;
    b.image_size = cfg.image_size;
    // Trained only with the references' few-shot map in the MMF input: inference needs them too.
    if (cfg.few_shot_probability >= 1.0) b.mode = "few-shot";
    b.map = cfg.map;  // the heads read at inference what they read here
    model::write_bundle(b, b.dir);
  }
  dist.barrier();
  result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return result;
}

}  // namespace iadgpt::train
