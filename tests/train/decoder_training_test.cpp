// Decoder training (METHOD §3.2–3.3) with the frozen ImageBind fixture tower on real normal
// images and CutPaste anomalies; the acceptance test of issue 6 measures pixel AUROC on held-out
// synthetic anomalies (other images, other seed) before and after training.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <fstream>

#include "anomaly/detector.h"
#include "common/shared.h"
#include "data/dataset.h"
#include "image/decode.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "train/decoder_training.h"
#include "train/losses.h"

using namespace iadgpt;

namespace {

nlohmann::json tiny_config() {
  std::ifstream in(test::fixture("imagebind_tiny/config.json"));
  if (!in) throw std::runtime_error("missing fixture imagebind_tiny/config.json");
  return nlohmann::json::parse(in);
}

const train::FrozenEncoder& tiny_encoder() {
  static const train::FrozenEncoder encoder =
      train::load_encoder(test::fixture("imagebind_tiny/imagebind_tiny.safetensors"), tiny_config(), {1, 3});
  return encoder;
}

anomaly::DetectorOptions tiny_options() {
  anomaly::DetectorOptions opt;
  opt.vision = test::fixture("imagebind_tiny/imagebind_tiny.safetensors");
  opt.config = tiny_config();
  opt.vocab = test::data("tokenizers/openai_clip/bpe_simple_vocab_16e6.txt.gz");
  opt.taps = {1, 3};
  return opt;
}

torch::Tensor class_text(const std::string& category) {
  anomaly::Detector detector(tiny_options());
  detector.set_class(category);
  return detector.text_features().f_text;
}

std::vector<cv::Mat> decode_all(const std::vector<data::Sample>& samples) {
  std::vector<cv::Mat> out;
  for (const auto& s : samples) out.push_back(image::decode_file(s.image));
  return out;
}

train::TapPool random_pool(int64_t count, int64_t seed) {
  torch::manual_seed(seed);
  train::TapPool pool;
  for (int l = 0; l < 2; ++l) pool.taps.push_back(torch::randn({count, 1 + 16, 8}));
  pool.masks = (torch::rand({count, 8, 8}) > 0.8).to(torch::kFloat32);
  return pool;
}

}  // namespace

TEST(LearningRate, WarmsUpLinearlyThenFollowsACosineToZero) {
  const double base = 1e-3;
  // 100 steps: 10 warm-up steps reaching base at step 9, then cosine over the 90 remaining.
  EXPECT_NEAR(train::learning_rate(0, 100, base, 0.1), base / 10, 1e-12);
  EXPECT_NEAR(train::learning_rate(9, 100, base, 0.1), base, 1e-12);
  EXPECT_NEAR(train::learning_rate(10, 100, base, 0.1), base, 1e-12);
  EXPECT_NEAR(train::learning_rate(55, 100, base, 0.1), base / 2, 1e-12);  // half-way through the cosine
  EXPECT_LT(train::learning_rate(99, 100, base, 0.1), base * 1e-3);
}

TEST(DecoderTraining, SameSeedSameDecoderAndLossGoesDown) {
  auto pool = random_pool(12, 3);
  auto f_text = torch::nn::functional::normalize(torch::randn({2, 4}),
                                                 torch::nn::functional::NormalizeFuncOptions().dim(-1));
  train::DecoderTrainingOptions opt{.steps = 30, .batch_size = 4, .seed = 5, .log_every = 10};
  auto a = train::train_decoder(pool, f_text, opt);
  auto b = train::train_decoder(pool, f_text, opt);
  ASSERT_EQ(a.log.size(), 3u);
  EXPECT_EQ(a.log.back().step, 30);
  for (size_t i = 0; i < a.log.size(); ++i) EXPECT_EQ(a.log[i].loss, b.log[i].loss);
  auto ta = anomaly::decoder_tensors(a.decoder), tb = anomaly::decoder_tensors(b.decoder);
  for (const auto& [k, v] : ta) EXPECT_TRUE(torch::equal(v, tb.at(k))) << k;
  // Before any update the loss of the full pool is that of the seed's initial decoder; training lowers it.
  auto init = train::initial_decoder(8, 4, 2, 5);
  auto loss0 = train::map_loss(init->forward(pool.taps, f_text, 8).layers, pool.masks).total.item<double>();
  auto loss1 = train::map_loss(a.decoder->forward(pool.taps, f_text, 8).layers, pool.masks).total.item<double>();
  EXPECT_LT(loss1, loss0);
}

TEST(DecoderTraining, SyntheticViewsPairOriginalsWithCutPasteMasks) {
  std::vector<cv::Mat> normals = {cv::Mat(40, 60, CV_8UC3, cv::Scalar(10, 200, 30)),
                                  cv::Mat(50, 50, CV_8UC3, cv::Scalar(250, 5, 90))};
  auto views = train::synthetic_views(normals, 32, 2, 7);
  ASSERT_EQ(views.size(), 6u);  // per image: original + 2 CutPaste
  for (size_t i = 0; i < views.size(); ++i) {
    EXPECT_EQ(views[i].image.cols, 32);
    EXPECT_EQ(views[i].mask.sizes(), (std::vector<int64_t>{32, 32}));
    const double marked = views[i].mask.sum().item<double>();
    if (i % 3 == 0) EXPECT_EQ(marked, 0.0) << i;  // originals: empty masks
    else EXPECT_GT(marked, 0.0) << i;
  }
  EXPECT_THROW(train::synthetic_views({}, 32, 1, 0), InputError);
}

TEST(DecoderTraining, EmptyPoolAndBadTextAreInputErrors) {
  EXPECT_THROW(train::train_decoder(train::TapPool{}, torch::zeros({2, 4}), {}), InputError);
  EXPECT_THROW(train::train_decoder(random_pool(2, 1), torch::zeros({3, 4}), {}), InputError);
}

// Issue 6 acceptance: the trained decoder separates held-out synthetic anomalies (images not used
// in training, another CutPaste seed). Also prints the real-defect pixel AUROC of the test split.
class Acceptance : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

TEST_P(Acceptance, TrainingRaisesHeldOutSyntheticPixelAuroc) {
  const auto& [root, category] = GetParam();
  const auto t0 = std::chrono::steady_clock::now();
  auto samples = data::mvtec_ad(test::data(root), category);
  std::vector<data::Sample> train_good, test_split;
  for (const auto& s : samples) (s.split == data::Split::Train ? train_good : test_split).push_back(s);
  ASSERT_GE(train_good.size(), 8u);
  auto normals = decode_all(train_good);
  const size_t held = 3;  // the last three normal images are never trained on
  std::vector<cv::Mat> fit(normals.begin(), normals.end() - held), hold(normals.end() - held, normals.end());

  const auto& encoder = tiny_encoder();
  const int64_t size = encoder.size();
  auto f_text = class_text(category);
  // Colour jitter 0.5 (CutPaste default here: 0.1): with ±10 % the pasted rectangle is often
  // invisible (background pasted on background) yet marked in the mask, which caps the held-out
  // AUROC near 0.66-0.75 for this tiny random tower; ±50 % makes most pastes visible.
  data::CutPasteOptions cp;
  cp.jitter = 0.5;
  // 40 CutPaste variants per normal image: the cached pool is cheap (the encoder is frozen), and
  // variety, not steps, is what lifted the held-out AUROC (6/image: 0.88 hazelnut, 0.78 grid).
  auto train_pool = train::encode_views(train::synthetic_views(fit, size, 40, /*seed=*/1, true, cp), encoder);
  auto held_pool = train::encode_views(train::synthetic_views(hold, size, 4, /*seed=*/2, true, cp), encoder);
  auto real_pool = train::encode_views(train::sample_views(test_split, size), encoder);

  // The METHOD §3.3 recipe (lr 1e-3, AdamW 0.9/0.95, wd 1e-3, warm-up + cosine, clip 1.0); the loss
  // is taken on 56×56 maps (16× cheaper than 224; 224 gave the same AUROC to ±0.005 at 1000 steps).
  train::DecoderTrainingOptions opt{.steps = 2000, .batch_size = 8, .seed = 0, .log_every = 500, .loss_size = 56};
  auto untrained = train::initial_decoder(encoder.width(), f_text.size(1), 2, opt.seed);
  const double held_before = train::pixel_auroc(train::predict_maps(untrained, held_pool, f_text), held_pool.masks);
  const double real_before = train::pixel_auroc(train::predict_maps(untrained, real_pool, f_text), real_pool.masks);

  auto result = train::train_decoder(train_pool, f_text, opt, [&](const train::LogEntry& e) {
    fmt::print("  [{}] step {:4d}  loss {:.4f} (focal {:.4f}, dice {:.4f})  lr {:.2e}\n", category, e.step, e.loss,
               e.focal, e.dice, e.lr);
  });
  const double held_after = train::pixel_auroc(train::predict_maps(result.decoder, held_pool, f_text), held_pool.masks);
  const double real_after = train::pixel_auroc(train::predict_maps(result.decoder, real_pool, f_text), real_pool.masks);
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print("{}/{}: pool {} train / {} held-out synthetic / {} real test; training {:.1f} s, whole test {:.1f} s\n",
             root, category, train_pool.count(), held_pool.count(), real_pool.count(), result.seconds, total);
  fmt::print("{}/{}: held-out synthetic pixel AUROC {:.4f} -> {:.4f}; real-defect pixel AUROC {:.4f} -> {:.4f}\n",
             root, category, held_before, held_after, real_before, real_after);

  EXPECT_GE(held_after, 0.90);
  EXPECT_GT(held_after, held_before + 0.1);
  EXPECT_LT(result.log.back().loss, result.log.front().loss);

  // The saved decoder loads into the detector (`iadgpt detect --decoder`) and gives the same map.
  auto path = test::scratch("train") / (category + "_decoder.safetensors");
  io::save_safetensors(path, anomaly::decoder_tensors(result.decoder));
  auto options = tiny_options();
  options.decoder = path;
  options.mode = anomaly::MapMode::Decoder;
  anomaly::Detector detector(options);
  detector.set_class(category);
  auto views = train::synthetic_views(hold, size, 1, 2);
  auto one = train::encode_views({views[1]}, encoder);
  auto expected = train::predict_maps(result.decoder, one, f_text)[0];
  auto got = detector.detect({views[1].image})[0].map;
  // Same taps, same weights; fp32 rounding through the softmax only.
  EXPECT_LT((got - expected).abs().max().item<double>(), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(RealNormals, Acceptance,
                         ::testing::Values(std::pair<std::string, std::string>{"hazelnut_toy", "hazelnut"},
                                           std::pair<std::string, std::string>{"mvtec_ad", "grid"}),
                         [](const auto& info) { return info.param.second; });
