// The trainer's evaluation (config `eval_every` and the end of a run): Yes/No accuracy and CE on
// the held-out synthetic pairs, the map's pixel and image AUROC on them, and the share of right
// answers on the labelled validation parts (config `validation`), each without and with the
// references' few-shot map — what the demo measures on its held-out parts.
//
// Internal to the train module.
#pragma once
#include <cstdint>
#include <vector>

#include "train/pool.h"
#include "train/step.h"
#include "train/trainer.h"

namespace iadgpt::train {

// `held_out` runs over the held-out pairs' pool, `validation` over the validation parts' pool.
EvalResult evaluate(Runner& held_out, Runner& validation, int64_t step);

// Yes/No accuracy over (original, synthetic) pairs: each pair scores the mean of its two
// answers, so the originals weigh as much as the anomalies whatever `eval_per_image`.
double pair_accuracy(const Pool& pool, const std::vector<int>& predicted);

}  // namespace iadgpt::train
