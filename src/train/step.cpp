#include "train/step.h"

#include <ATen/autocast_mode.h>

#include <algorithm>
#include <map>

#include "llm/chat.h"
#include "llm/train_forward.h"
#include "model/prompt.h"
#include "nn/device.h"
#include "train/losses.h"

namespace iadgpt::train {

namespace {

// The METHOD §1.9 prompts of a batch followed by their answers, padded to one length: the
// embeddings [n, T, H], the padding mask [n, T], the labels [n, T] (only answer tokens count) and
// where each answer starts.
struct Sequences {
  torch::Tensor embeddings, mask, labels;
  std::vector<int64_t> answer_start;
};

Sequences build_sequences(const Runner& r, const std::vector<int64_t>& idx, const std::vector<torch::Tensor>& image_token,
                          const std::vector<torch::Tensor>& expert) {
  const int64_t n = static_cast<int64_t>(idx.size());
  std::vector<torch::Tensor> xs;
  std::vector<std::vector<int64_t>> labels;
  Sequences out;
  int64_t T = 0;
  for (int64_t j = 0; j < n; ++j) {
    auto segs = model::anomalygpt_prompt(r.tok, image_token[j], expert[j], {}, question_of(r.pool, r.cats, idx[j]));
    const auto& ans = r.pool.answer_ids[idx[j]];
    segs.push_back(llm::Segment::tokens(ans));
    auto x = llm::embed_segments(r.model.llm, segs);
    const int64_t len = x.size(0), prompt = len - static_cast<int64_t>(ans.size());
    std::vector<int64_t> lab(len, llm::kIgnoreIndex);
    std::copy(ans.begin(), ans.end(), lab.begin() + prompt);
    xs.push_back(x);
    labels.push_back(std::move(lab));
    out.answer_start.push_back(prompt);
    T = std::max(T, len);
  }
  const int64_t H = r.model.llm.config.hidden_size;
  std::vector<torch::Tensor> padded;
  out.mask = torch::zeros({n, T}, torch::kInt64);
  out.labels = torch::full({n, T}, llm::kIgnoreIndex, torch::kInt64);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t len = xs[j].size(0);
    padded.push_back(len < T ? torch::cat({xs[j], torch::zeros({T - len, H}, xs[j].options())}) : xs[j]);
    out.mask[j].narrow(0, 0, len).fill_(1);
    out.labels[j].narrow(0, 0, len).copy_(torch::tensor(labels[j]));
  }
  out.embeddings = torch::stack(padded);
  return out;
}

}  // namespace

const anomaly::TextFeatures& Runner::text_of(int64_t category) {
  auto it = device_text.find(category);
  if (it != device_text.end()) return it->second;
  auto text = cats[category].text;
  for (auto* t : {&text.normal_sentences, &text.abnormal_sentences, &text.f_text}) nn::to_device(*t, device);
  return device_text.emplace(category, std::move(text)).first->second;
}

void Runner::cache_frozen(int64_t stage) {
  cached_layer_maps = torch::Tensor();
  cached_expert = torch::Tensor();
  if (stage == 2) return;
  torch::NoGradGuard g;
  std::vector<torch::Tensor> maps, expert;
  for (int64_t start = 0; start < pool.size(); start += 8) {
    const int64_t n = std::min<int64_t>(8, pool.size() - start);
    // Per example: F_text is the example's category's.
    for (int64_t i = 0; i < n; ++i) {
      std::vector<torch::Tensor> one;
      for (const auto& t : pool.taps) one.push_back(t.narrow(0, start + i, 1).to(device));
      auto lm = model.heads.decoder->forward(one, text_of(pool.category[start + i]).f_text, size);
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
    auto without = model::expert_tokens(model.heads, {.layer_maps = lm}).expert_tokens;
    auto with = model::expert_tokens(model.heads, {.layer_maps = lm, .few_shot = pool.few_shot.narrow(0, start, n).to(device)}).expert_tokens;
    expert.push_back(torch::stack({without, with}, 1));
  }
  cached_expert = torch::cat(expert);
}

model::HeadOutputs Runner::heads_of(int64_t category, const std::vector<int64_t>& pidx, const std::vector<bool>& substitute) {
  const auto& text = text_of(category);
  // The pools live in host memory: the step's rows are gathered there and copied once.
  auto it = torch::tensor(pidx);
  auto fs = pool.few_shot.index_select(0, it).clone();
  for (size_t r = 0; r < pidx.size(); ++r)
    if (!substitute[r]) fs[static_cast<int64_t>(r)].zero_();  // no references: zeros, as inference
  fs = fs.to(device);
  auto e = pool.embedding.index_select(0, it).to(device);
  if (!cached_layer_maps.defined()) {
    std::vector<torch::Tensor> taps;
    for (const auto& t : pool.taps) taps.push_back(t.index_select(0, it).to(device));
    return model::run_heads(model.heads, taps, e, fs, text, size);
  }
  model::HeadOutputs out;
  out.layer_maps = cached_layer_maps.index_select(0, it.to(device));
  out.text_map = out.layer_maps.mean(1);
  if (cached_expert.defined()) {
    std::vector<int64_t> flat;
    for (size_t r = 0; r < pidx.size(); ++r) flat.push_back(pidx[r] * 2 + (substitute[r] ? 1 : 0));
    out.expert_tokens = cached_expert.flatten(0, 1).index_select(0, torch::tensor(flat).to(device));
  } else {
    out.expert_tokens = model::expert_tokens(model.heads, {.layer_maps = out.layer_maps, .few_shot = fs}).expert_tokens;
  }
  out.image_token = model::image_token(model.heads, e, text);
  return out;
}

BatchOut Runner::run(const std::vector<int64_t>& idx, const std::vector<bool>& substitute,
                     const std::vector<uint64_t>& seeds, const std::vector<bool>& map_rows, bool keep_maps) {
  const int64_t n = static_cast<int64_t>(idx.size());
  auto map_row = [&](int64_t j) { return !map_rows.empty() && map_rows[j]; };
  std::vector<torch::Tensor> image_token(n), expert(n), text_map(n);
  std::vector<std::vector<torch::Tensor>> probs(n);
  // Heads per category (F_text differs), results put back in batch order.
  std::map<int64_t, std::vector<int64_t>> by_cat;
  for (int64_t j = 0; j < n; ++j) by_cat[pool.category[idx[j]]].push_back(j);
  for (const auto& [cat, rows] : by_cat) {
    std::vector<int64_t> pidx;
    std::vector<bool> sub;
    for (auto j : rows) pidx.push_back(idx[j]), sub.push_back(substitute[j]);
    auto out = heads_of(cat, pidx, sub);
    for (size_t r = 0; r < rows.size(); ++r) {
      const auto j = rows[r];
      const auto k = static_cast<int64_t>(r);
      image_token[j] = out.image_token[k].unsqueeze(0);
      expert[j] = out.expert_tokens[k];
      if (keep_maps) text_map[j] = out.text_map[k].detach();
      if (map_row(j))
        for (const auto& lp : out.layer_probs) probs[j].push_back(lp[k]);
    }
  }
  auto seq = build_sequences(*this, idx, image_token, expert);
  llm::TrainForwardOptions fo;
  fo.checkpoint_layers = cfg.gradient_checkpointing;
  if (!seeds.empty() && model.lora) {
    fo.lora_dropout = model.lora->spec.dropout;
    fo.dropout_seeds = seeds;
  }
  auto logits = llm::forward_train(model.llm, seq.embeddings, seq.mask, fo);
  BatchOut out;
  out.ce = llm::answer_cross_entropy(logits, seq.labels.to(device));
  const auto decide = static_cast<int64_t>(decision.prefix.size());  // answer tokens before the decision
  if (cfg.decision_weight > 0) {
    // The token that says Yes or No, once more on its own (full-vocabulary CE): within the mean
    // over an answer of ~30 tokens it would otherwise weigh 1/30 of the example.
    std::vector<torch::Tensor> rows;
    std::vector<int64_t> targets;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t at = seq.answer_start[j] + decide;
      rows.push_back(logits[j][at - 1]);
      targets.push_back(seq.labels[j][at].item<int64_t>());  // host labels
    }
    out.decision_ce = torch::nn::functional::cross_entropy(
        torch::stack(rows), torch::tensor(targets).to(device),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  }
  {
    // The Yes and No logits of every row, copied to the host at once.
    torch::NoGradGuard g;
    std::vector<torch::Tensor> yes_no;
    for (int64_t j = 0; j < n; ++j) {
      auto row = logits[j][seq.answer_start[j] - 1 + decide];
      yes_no.push_back(torch::stack({row[decision.yes], row[decision.no]}));
    }
    const auto host = torch::stack(yes_no).to(torch::kCPU).contiguous();
    const auto* v = host.data_ptr<float>();
    for (int64_t j = 0; j < n; ++j) out.predicted.push_back(v[2 * j] > v[2 * j + 1] ? 1 : 0);
  }
  std::vector<int64_t> with_map;
  for (int64_t j = 0; j < n; ++j)
    if (map_row(j)) with_map.push_back(j);
  if (!with_map.empty()) {
    std::vector<torch::Tensor> layers;
    for (size_t l = 0; l < probs[with_map[0]].size(); ++l) {
      std::vector<torch::Tensor> rows;
      for (auto j : with_map) rows.push_back(probs[j][l]);
      layers.push_back(torch::stack(rows));
    }
    std::vector<torch::Tensor> m;
    for (auto j : with_map) m.push_back(pool.masks[idx[j]]);
    auto ml = map_loss(layers, binarize_mask(torch::stack(m)).to(device));
    out.map_total = ml.total;
    out.map_rows = static_cast<int64_t>(with_map.size());
    out.focal = ml.focal.item<double>();
    out.dice = ml.dice.item<double>();
  }
  if (keep_maps) out.text_map = torch::stack(text_map).to(torch::kCPU);  // evaluation reads it on the host
  return out;
}

Autocast::Autocast(bool on, const torch::Device& device) : on_(on), cuda_(device.is_cuda()) {
  if (!on_) return;
  nn::set_autocast(cuda_ ? c10::DeviceType::CUDA : c10::DeviceType::CPU, true, at::kBFloat16);
  at::autocast::increment_nesting();
}

Autocast::~Autocast() {
  if (!on_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  const auto type = cuda_ ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
  nn::set_autocast(type, false, nn::autocast_dtype(type));
}

}  // namespace iadgpt::train
