// The map pipeline end to end with the ImageBind fixture tower on real benchmark images.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <opencv2/imgproc.hpp>

#include <fstream>

#include "anomaly/detector.h"
#include "common/shared.h"
#include "image/decode.h"
#include "io/checkpoint.h"
#include "io/error.h"

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
