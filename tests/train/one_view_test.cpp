// One input view (issue 15, METHOD §1.1/§1.5; issue 18's one heads function): the tensors the
// trainer builds for an example — e, the taps, M_fs from its references, the class's text
// features — and the tokens the heads make of them equal what model::IadGpt feeds the LLM for the
// same image and references, for a square and a non-square image.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <fmt/format.h>

#include "anomaly/maps.h"
#include "common/shared.h"
#include "image/decode.h"
#include "io/checkpoint.h"
#include "llm/config.h"
#include "llm/tokenizer.h"
#include "model/heads.h"
#include "model/pipeline.h"
#include "model/tiny_bundle.h"
#include "train/config.h"
#include "train/pool.h"

using namespace iadgpt;
namespace fs = std::filesystem;

namespace {

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// Four normal parts of one class, cut from the grid fixture to rows × cols (MVTec layout).
std::vector<cv::Mat> write_parts(const fs::path& root, int rows, int cols) {
  const auto dir = root / "grid" / "train" / "good";
  fs::create_directories(dir);
  fs::create_directories(root / "grid" / "test" / "good");
  std::vector<cv::Mat> parts;
  for (int i = 0; i < 4; ++i) {
    auto rgb = image::decode_file(test::data(fmt::format("mvtec_ad/grid/train/good/{:03d}.png", i)));
    cv::Mat part = rgb(cv::Rect(0, 0, std::min(cols, rgb.cols), std::min(rows, rgb.rows))).clone();
    cv::Mat bgr;
    cv::cvtColor(part, bgr, cv::COLOR_RGB2BGR);
    cv::imwrite((dir / fmt::format("{:03d}.png", i)).string(), bgr);
    parts.push_back(image::decode_file(dir / fmt::format("{:03d}.png", i)));
  }
  return parts;
}

void expect_one_view(const std::string& name, int rows, int cols) {
  // A bundle of the tiny towers with random heads, built few-shot with rotations as the trainer's are.
  auto fields = test::tiny_bundle_fields(name);
  fields.taps = {0, 1, 2, 3};
  fields.rotations = true;
  model::init_random_adapters(fields, 3);
  model::write_bundle(fields, fields.dir);
  const auto bundle = model::read_bundle(fields.dir);
  const auto parts = write_parts(test::scratch(name) / "parts", rows, cols);

  // Inference: part 0 against references 1 and 2.
  model::IadGpt m(bundle);
  m.set_class("grid");
  m.set_references({parts[1], parts[2]});
  m.inspect(parts[0], {.generate = false});
  const auto& served = m.image_tokens();

  // Training: the pool of the same class, 2 references (the bank of part 0 leaves part 0 out).
  nlohmann::json j{{"out", (test::scratch(name) / "out").string()},
                   {"vision", bundle.vision.string()},
                   {"vision_config", *bundle.vision_config},
                   {"vocab", bundle.vocab->string()},
                   {"taps", {0, 1, 2, 3}},
                   {"llm", bundle.llm.string()},
                   {"tokenizer", bundle.tokenizer->string()},
                   {"datasets", {{{"kind", "mvtec"}, {"root", (test::scratch(name) / "parts").string()}, {"categories", {"grid"}}}}},
                   {"per_image", 1},
                   {"holdout", 0},
                   {"references", 2},
                   {"stages", {{{"stage", 1}, {"steps", 1}}}},
                   {"batch_size", 1}};
  const auto cfg = train::parse_train_config(j, test::scratch(name) / "train.json");
  auto frozen = train::load_frozen(cfg);
  const auto tok = llm::Tokenizer::from_path(cfg.tokenizer.value_or(cfg.llm));
  const auto pools = train::build_pools(cfg, frozen, tok, 2048);
  ASSERT_EQ(pools.train.label[0], 0);  // example 0: part 0 as it is
  ASSERT_EQ(pools.cats[0].name, "grid");

  // The heads on the trainer's tensors (what its step feeds them), with the bundle's weights.
  auto heads = model::load_heads(bundle, model::resolve_sources(bundle), served.embedding.size(1),
                                 served.image_token.size(1));
  heads.decoder = anomaly::VisualDecoder(frozen.encoder.width(), served.embedding.size(1), 4);
  anomaly::load_decoder(heads.decoder, io::load_checkpoint(*bundle.decoder).tensors, bundle.decoder->string());
  heads.decoder->eval();
  std::vector<torch::Tensor> taps;
  for (const auto& t : pools.train.taps) taps.push_back(t.narrow(0, 0, 1));
  torch::NoGradGuard no_grad;
  const auto e = pools.train.embedding.narrow(0, 0, 1);
  const auto few_shot = pools.train.few_shot.narrow(0, 0, 1);
  const auto trained = model::run_heads(heads, taps, e, few_shot, pools.cats[0].text, frozen.size);

  // Tolerance 1e-5: the trainer encodes its images 16 at a time, inference one at a time, and the
  // fp32 GEMMs may block a batch differently (values are O(1); a wrong view differs by O(0.1)).
  EXPECT_LT(max_abs_diff(e, served.embedding), 1e-5) << "e";
  EXPECT_LT(max_abs_diff(few_shot[0], served.masks[0][5]), 1e-5) << "M_fs";
  EXPECT_LT(max_abs_diff(trained.layer_maps[0], served.masks[0].narrow(0, 0, 4)), 1e-5) << "layer maps";
  EXPECT_LT(max_abs_diff(trained.image_token, served.image_token), 1e-5) << "E_img";
  EXPECT_LT(max_abs_diff(trained.expert_tokens, served.expert_tokens), 1e-5) << "E_expert";
}

}  // namespace

TEST(OneView, TrainingFeedsTheHeadsWhatInferenceFeedsThemForASquarePart) { expect_one_view("one-view-square", 224, 224); }

TEST(OneView, TrainingFeedsTheHeadsWhatInferenceFeedsThemForANonSquarePart) {
  expect_one_view("one-view-wide", 160, 224);
}
