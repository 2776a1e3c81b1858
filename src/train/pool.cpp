#include "train/pool.h"

#include <fmt/format.h>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <random>
#include <utility>

#include "anomaly/detector.h"
#include "data/dataset.h"
#include "data/synthesis.h"
#include "image/decode.h"
#include "image/preprocess.h"
#include "io/error.h"
#include "model/class_prompts.h"
#include "model/prompt.h"
#include "train/seeding.h"
#include "vision/vit.h"

namespace iadgpt::train {
namespace fs = std::filesystem;

namespace {

constexpr const char* kQuestion = "Is there any anomaly in the image?";

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

// A soft synthesis mask at the map side S: bilinear as every map (anomaly::resize_map), kept in [0, 1].
torch::Tensor mask_at(const torch::Tensor& soft, int64_t size) { return anomaly::resize_map(soft, size, size).clamp(0, 1); }


data::SynthesisOptions synthesis_options(const std::string& cat_name) {
  data::SynthesisOptions opt;
  opt.nsa.cls = data::nsa_class(cat_name);
  opt.cutpaste.jitter = 0.5;
  return opt;
}

// The map warm-up's views (decoder_training's LabelledView, S×S): each image with an empty mask
// and `variants` synthetic anomalies of it, masks binarised at 0.3 as the map loss does.
std::vector<LabelledView> map_views(const TrainConfig& cfg, const Frozen& frozen, const std::vector<cv::Mat>& textures,
                                    const std::string& cat_name, const std::vector<cv::Mat>& images, int64_t variants,
                                    uint64_t salt) {
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

// Adds examples to a pool: (original, No) and per_image × (synthetic, Yes …) for each image, or
// labelled parts; few-shot maps from `refs` (their taps with rotations form the memory bank; the
// image itself is excluded).
struct Builder {
  const TrainConfig& cfg;
  Frozen& frozen;
  const llm::Tokenizer& tok;
  const std::vector<cv::Mat>& textures;

  std::vector<int64_t> answer_ids(const std::string& answer) const { return tok.encode(answer + "\n###"); }


  // Few-shot maps [n, S, S] of encoded views: the bank of the references (with 90/180/270°
  // rotations, AnomalyGPT's augmentation) other than the view's own source image (`own[v]`, the
  // pixels it was made from; nullptr: none of them).
  torch::Tensor few_shot_maps(const Encoded& enc, const std::vector<cv::Mat>& refs, const std::vector<const uchar*>& own,
                              const std::string& cat_name) const {
    // The bank as inference builds it (anomaly::Detector::reference_taps): every reference's map
    // view, then the 90/180/270° rotations of those views (rotation-major order).
    const auto ref_taps = frozen.detector->reference_taps(refs);
    const auto R = static_cast<int64_t>(refs.size());
    const int64_t views = ref_taps.front().size(0) / R;  // 4 with rotations
    std::vector<torch::Tensor> few_shot;
    for (size_t v = 0; v < own.size(); ++v) {
      anomaly::MemoryBank bank;
      std::vector<int64_t> keep;
      for (size_t r = 0; r < refs.size(); ++r)
        if (refs[r].data != own[v])
          for (int64_t k = 0; k < views; ++k) keep.push_back(k * R + static_cast<int64_t>(r));
      if (keep.empty()) throw InputError(fmt::format("category '{}': no normal reference besides the image itself", cat_name));
      auto idx = torch::tensor(keep);
      std::vector<torch::Tensor> bank_taps, query;
      for (size_t l = 0; l < ref_taps.size(); ++l) {
        bank_taps.push_back(ref_taps[l].to(torch::kFloat32).index_select(0, idx));
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

}  // namespace

const std::string& question_of(const Pool& pool, const std::vector<Category>& cats, int64_t i) {
  return pool.question[i].empty() ? cats[pool.category[i]].question : pool.question[i];
}

Frozen load_frozen(const TrainConfig& cfg) {
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
  dopt.rotations = true;  // the references' 90/180/270° views join the bank (AnomalyGPT's augmentation)
  frozen.detector.emplace(dopt);
  return frozen;
}

Encoded encode(Frozen& frozen, const std::vector<cv::Mat>& images) {
  torch::NoGradGuard no_grad;
  Encoded out;
  std::vector<std::vector<torch::Tensor>> per_layer(frozen.encoder.taps.size());
  std::vector<torch::Tensor> emb;
  for (size_t start = 0; start < images.size(); start += 16) {
    const std::vector<cv::Mat> chunk(images.begin() + static_cast<std::ptrdiff_t>(start),
                                     images.begin() + static_cast<std::ptrdiff_t>(std::min(images.size(), start + 16)));
    auto o = frozen.detector->encode_images(chunk);  // inference's views (METHOD §1.1)
    for (size_t l = 0; l < o.taps.size(); ++l) per_layer[l].push_back(o.taps[l].to(torch::kFloat32));
    emb.push_back(o.embedding.to(torch::kFloat32));
  }
  for (auto& l : per_layer) out.taps.push_back(torch::cat(l));
  out.embedding = torch::cat(emb);
  return out;
}

Pools build_pools(const TrainConfig& cfg, Frozen& frozen, const llm::Tokenizer& tok, int64_t max_positions) {
  Pools pools;
  if (cfg.synthesis == "perlin") pools.textures = load_textures(*cfg.textures);
  const Builder builder{cfg, frozen, tok, pools.textures};
  auto& cats = pools.cats;
  auto& train_images = pools.train_images;
  auto& train_pool = pools.train;
  auto& eval_pool = pools.eval;
  auto& val_pool = pools.val;
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
  auto& instruction_items = pools.instruction_items;
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
      if (len > max_positions)
        throw InputError(fmt::format("{}: a '{}' example needs {} positions (prompt + answer), the LLM has {}; "
                                     "use fewer/larger synthetic regions or a longer-context LLM",
                                     cfg.source.string(), c.name, len, max_positions));
    }
  return pools;
}

DecoderTrainingResult warm_up_decoder(const TrainConfig& cfg, const Frozen& frozen, const Pools& pools, uint64_t seed) {
  const auto& cats = pools.cats;
  const auto& images = pools.train_images;
  std::vector<LabelledView> views;
  std::vector<int64_t> text_index;
  std::vector<torch::Tensor> texts;
  for (size_t c = 0; c < images.size(); ++c) {  // the dataset categories (not the instructions')
    auto v = map_views(cfg, frozen, pools.textures, cats[c].name, images[c], cfg.map_warmup.per_image, mix({seed, c}));
    text_index.insert(text_index.end(), v.size(), static_cast<int64_t>(c));
    views.insert(views.end(), std::make_move_iterator(v.begin()), std::make_move_iterator(v.end()));
    texts.push_back(cats[c].text.f_text.to(torch::kFloat32));
  }
  auto pool = encode_views(views, frozen.encoder);
  views.clear();
  pool.text_index = std::move(text_index);
  DecoderTrainingOptions opt{.steps = cfg.map_warmup.steps, .batch_size = cfg.map_warmup.batch_size,
                             .lr = cfg.map_warmup.lr, .seed = seed, .log_every = std::max<int64_t>(1, cfg.map_warmup.steps / 10),
                             .loss_size = cfg.map_warmup.loss_size};
  return train_decoder(pool, torch::stack(texts), opt);
}

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


}  // namespace iadgpt::train
