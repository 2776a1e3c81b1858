// The map pipeline end to end with the ImageBind fixture tower on real benchmark images.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <opencv2/imgproc.hpp>

#include <fstream>

#include "anomaly/detector.h"
#include "common/method_reference.h"
#include "common/shared.h"
#include "image/decode.h"
#include "image/preprocess.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "vision/loader.h"

using namespace iadgpt;

namespace {

anomaly::DetectorOptions tiny_options() {
  anomaly::DetectorOptions opt;
  opt.vision = test::fixture("imagebind_tiny/imagebind_tiny.safetensors");
  opt.config = nlohmann::json::parse(std::ifstream(test::fixture("imagebind_tiny/config.json")));
  opt.vocab = test::data("tokenizers/openai_clip/bpe_simple_vocab_16e6.txt.gz");
  opt.taps = {1, 3};
  return opt;
}

cv::Mat grid_image(const std::string& name) { return image::decode_file(test::data("mvtec_ad/grid/train/good/" + name)); }

}  // namespace

TEST(FewShotOnRealImages, QueryIdenticalToReferenceGivesZeroMap) {
  anomaly::Detector detector(tiny_options());
  auto good = grid_image("000.png");
  detector.set_references({good});
  ASSERT_EQ(detector.effective_mode(), anomaly::MapMode::FewShot);
  auto d = detector.detect({good});
  ASSERT_EQ(d[0].map.sizes(), (std::vector<int64_t>{224, 224}));
  // Same pixels, same tokens: 1 − cos(x, x) is zero up to fp32 rounding of the norms.
  EXPECT_LT(d[0].map.abs().max().item<double>(), 1e-4);
}

TEST(FewShotOnRealImages, PastedPatchHoldsTheMapMaximum) {
  anomaly::Detector detector(tiny_options());
  auto good = grid_image("000.png");
  detector.set_references({good, grid_image("001.png")});
  // Paste a hazelnut crop into the grid image: rows/cols [512, 768) of 1024 = [112, 168) at 224.
  auto query = good.clone();
  auto nut = image::decode_file(test::data("hazelnut_toy/hazelnut/train/good/00.jpg"));
  cv::Mat patch;
  cv::resize(nut(cv::Rect(128, 128, 256, 256)), patch, cv::Size(256, 256));
  patch.copyTo(query(cv::Rect(512, 512, 256, 256)));
  auto d = detector.detect({query});
  auto flat_index = d[0].map.argmax().item<int64_t>();
  const int64_t y = flat_index / 224, x = flat_index % 224;
  // The maximum lies in the pasted square, widened by one 14-pixel patch for the bilinear upsampling.
  EXPECT_GE(y, 112 - 14);
  EXPECT_LT(y, 168 + 14);
  EXPECT_GE(x, 112 - 14);
  EXPECT_LT(x, 168 + 14);
  // And the pasted area scores far above the untouched top-left quarter.
  auto inside = d[0].map.slice(0, 112, 168).slice(1, 112, 168).mean().item<double>();
  auto outside = d[0].map.slice(0, 0, 96).slice(1, 0, 96).mean().item<double>();
  EXPECT_GT(inside, 2 * outside);
}

TEST(ZeroShotOnRealImages, GivesAProbabilityMapPerImage) {
  anomaly::Detector detector(tiny_options());
  detector.set_class("grid");
  ASSERT_EQ(detector.effective_mode(), anomaly::MapMode::ZeroShot);
  auto d = detector.detect({grid_image("000.png"), grid_image("002.png")});
  ASSERT_EQ(d.size(), 2u);
  EXPECT_GE(d[0].map.min().item<double>(), 0.0);
  EXPECT_LE(d[0].map.max().item<double>(), 1.0);
  EXPECT_EQ(d[0].layer_maps.size(0), 2);
  EXPECT_FLOAT_EQ(d[0].score, d[0].map.max().item<float>());
  EXPECT_FALSE(torch::equal(d[0].map, d[1].map));
}

// METHOD §1.6 recomputed in float64 from the tower's tensors: each tapped patch token through the
// head LayerNorm (by hand) and the projection, normalised, 100·cos with F_text, upsampled,
// softmax; mean over layers. The detector's patch features, layer maps and map must all agree.
TEST(ZeroShotOnRealImages, MapIsTheHeadLayerNormAndProjectionComparedWithFText) {
  auto opt = tiny_options();
  opt.features = true;
  anomaly::Detector detector(opt);
  detector.set_class("grid");
  ASSERT_EQ(detector.effective_mode(), anomaly::MapMode::ZeroShot);
  const auto img = grid_image("000.png");  // square: the map view is the encoder's input
  const auto d = detector.detect({img})[0];

  torch::NoGradGuard no_grad;
  vision::VisionOptions vopt;
  vopt.config = opt.config;
  const auto tower = vision::load_vision(io::load_checkpoint(opt.vision), vopt);
  const auto& w = tower.weights;
  ASSERT_TRUE(w.proj.defined());
  const auto taps = vision::vit_forward(w, tower.config, image::clip_map_view(img, 224).unsqueeze(0), opt.taps).taps;
  const auto& f_text = detector.text_features().f_text;
  std::vector<torch::Tensor> features, layer_maps;
  for (const auto& tap : taps) {
    auto p = test::reference::joint_projection(tap, w.head_ln_weight, w.head_ln_bias, tower.config.eps, w.proj);
    features.push_back(test::reference::normalize_rows(p)[0]);
    layer_maps.push_back(test::reference::text_map(p, f_text, 224)[0][1]);
  }
  const auto expected_features = torch::stack(features);  // [L, N, D]
  const auto expected_layers = torch::stack(layer_maps);  // [L, S, S]
  const auto expected_map = expected_layers.mean(0);
  auto diff = [](const torch::Tensor& a, const torch::Tensor& b) {
    return (a.to(torch::kFloat64) - b).abs().max().item<double>();
  };
  ASSERT_EQ(d.patch_features.sizes(), expected_features.sizes());
  // fp32 vs float64 on unit vectors of width 32 after a 64-wide LayerNorm: ~1e-7 each; 1e-5.
  EXPECT_LT(diff(d.patch_features, expected_features), 1e-5);
  // The ×100 logit scale turns a 1e-7 cosine error into 1e-5 before the softmax (slope ≤ 1/4): 1e-4.
  EXPECT_LT(diff(d.layer_maps, expected_layers), 1e-4);
  EXPECT_LT(diff(d.map, expected_map), 1e-4);
  // The map is not flat (a constant would hide a wrong projection less well).
  EXPECT_GT((expected_map.max() - expected_map.min()).item<double>(), 1e-3);
}

TEST(DecoderOnRealImages, LoadsTrainedWeightsAndBlendsWithReferences) {
  const auto dir = test::scratch("detector");
  anomaly::VisualDecoder decoder(64, 32, 2);
  io::save_safetensors(dir / "decoder.safetensors", anomaly::decoder_tensors(decoder));
  auto opt = tiny_options();
  opt.decoder = dir / "decoder.safetensors";
  anomaly::Detector detector(opt);
  detector.set_class("grid");
  EXPECT_EQ(detector.effective_mode(), anomaly::MapMode::Decoder);
  auto text_only = detector.detect({grid_image("000.png")});
  detector.set_references({grid_image("000.png")});
  EXPECT_EQ(detector.effective_mode(), anomaly::MapMode::Blend);
  auto blended = detector.detect({grid_image("000.png")});
  // The few-shot half is zero for the reference itself, so the blend halves the decoder map.
  EXPECT_LT((blended[0].map - text_only[0].map / 2).abs().max().item<double>(), 1e-4);
  std::filesystem::remove_all(dir);
}

TEST(DetectorOptions, ModesThatLackTheirInputsAreRejected) {
  auto opt = tiny_options();
  opt.mode = anomaly::MapMode::Decoder;
  EXPECT_THROW(anomaly::Detector{opt}, InputError);
  opt.mode = anomaly::MapMode::FewShot;
  anomaly::Detector detector(opt);
  EXPECT_THROW(detector.detect({grid_image("000.png")}), InputError);
  opt.mode = anomaly::MapMode::Auto;
  opt.taps = {9};
  EXPECT_THROW(anomaly::Detector{opt}, InputError);
  EXPECT_THROW(anomaly::parse_map_mode("magic"), InputError);
}
