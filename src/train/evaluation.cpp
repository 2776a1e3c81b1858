#include "train/evaluation.h"

#include <algorithm>

#include "train/decoder_training.h"
#include "train/losses.h"

namespace iadgpt::train {

namespace {

std::vector<int64_t> range(int64_t start, int64_t end) {
  std::vector<int64_t> idx;
  for (int64_t i = start; i < end; ++i) idx.push_back(i);
  return idx;
}

// Held-out pairs, self-supervised (M_fs channel zero, as inference without references) and
// few-shot (the references' M_fs in the MMF input, as inference with --reference).
void evaluate_pairs(Runner& runner, EvalResult& r) {
  const auto& pool = runner.pool;
  std::vector<torch::Tensor> maps;
  std::vector<int> predicted, predicted_fs;
  double ce = 0;
  for (int64_t start = 0; start < pool.size(); start += 8) {
    const auto idx = range(start, std::min(pool.size(), start + 8));
    auto o = runner.run(idx, std::vector<bool>(idx.size(), false), {}, {}, true);
    auto f = runner.run(idx, std::vector<bool>(idx.size(), true), {}, {}, false);
    predicted.insert(predicted.end(), o.predicted.begin(), o.predicted.end());
    predicted_fs.insert(predicted_fs.end(), f.predicted.begin(), f.predicted.end());
    ce += o.ce.sum().item<double>();
    maps.push_back(o.text_map);
  }
  r.examples = pool.size();
  r.pairs = std::count(pool.label.begin(), pool.label.end(), 1);
  r.yes_no_accuracy = pair_accuracy(pool, predicted);
  r.yes_no_accuracy_few_shot = pair_accuracy(pool, predicted_fs);
  for (int64_t i = 0; i < pool.size(); ++i) (pool.label[i] == 1 ? r.yes_on_anomalous : r.yes_on_normal) += predicted[i];
  r.yes_on_anomalous /= std::max<double>(1.0, static_cast<double>(r.pairs));
  r.yes_on_normal /= std::max<double>(1.0, static_cast<double>(r.examples - r.pairs));
  r.ce = ce / static_cast<double>(r.examples);
  auto all_maps = torch::cat(maps);
  auto masks = binarize_mask(pool.masks);
  r.pixel_auroc = masks.sum().item<double>() > 0 ? pixel_auroc(all_maps, masks) : 0.0;
  // The map's own image-level separation (score = max M_text), next to what the LLM answers.
  auto labels = torch::tensor(std::vector<int64_t>(pool.label.begin(), pool.label.end())).to(torch::kFloat32);
  if (r.pairs > 0 && r.pairs < r.examples) r.image_auroc = pixel_auroc(all_maps.amax({1, 2}), labels);
}

// The labelled validation parts: the share of right answers, as the demo counts them.
void evaluate_validation(Runner& runner, EvalResult& r) {
  const auto& pool = runner.pool;
  r.validation_parts = pool.size();
  for (int64_t start = 0; start < pool.size(); start += 8) {
    const auto idx = range(start, std::min(pool.size(), start + 8));
    auto o = runner.run(idx, std::vector<bool>(idx.size(), false), {}, {}, false);
    auto f = runner.run(idx, std::vector<bool>(idx.size(), true), {}, {}, false);
    for (size_t j = 0; j < idx.size(); ++j) {
      r.validation_accuracy += o.predicted[j] == pool.label[idx[j]];
      r.validation_accuracy_few_shot += f.predicted[j] == pool.label[idx[j]];
    }
  }
  if (r.validation_parts > 0) {
    r.validation_accuracy /= static_cast<double>(r.validation_parts);
    r.validation_accuracy_few_shot /= static_cast<double>(r.validation_parts);
  }
}

}  // namespace

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

EvalResult evaluate(Runner& held_out, Runner& validation, int64_t step) {
  EvalResult r;
  r.step = step;
  torch::NoGradGuard g;
  if (held_out.pool.size() > 0) evaluate_pairs(held_out, r);
  evaluate_validation(validation, r);
  return r;
}

nlohmann::json EvalResult::to_json() const {
  return {{"event", "eval"}, {"step", step}, {"examples", examples}, {"pairs", pairs},
          {"yes_no_accuracy", yes_no_accuracy}, {"yes_no_accuracy_few_shot", yes_no_accuracy_few_shot},
          {"yes_on_normal", yes_on_normal}, {"yes_on_anomalous", yes_on_anomalous}, {"ce", ce},
          {"pixel_auroc", pixel_auroc}, {"image_auroc", image_auroc}, {"validation_parts", validation_parts},
          {"validation_accuracy", validation_accuracy}, {"validation_accuracy_few_shot", validation_accuracy_few_shot}};
}

}  // namespace iadgpt::train
