// Anomaly maps on constructed tokens: each expected value is computed independently here
// (per-patch softmax, brute-force nearest neighbour), never copied from the code under test.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "anomaly/maps.h"
#include "io/error.h"

using namespace iadgpt;
namespace F = torch::nn::functional;

namespace {

torch::Tensor unit(const torch::Tensor& t) { return F::normalize(t, F::NormalizeFuncOptions().dim(-1)); }

// Taps [B, 1+N, D] with random tokens, grid g×g.
std::vector<torch::Tensor> random_taps(int64_t batch, int64_t grid, int64_t width, int64_t layers, int seed) {
  torch::manual_seed(seed);
  std::vector<torch::Tensor> taps;
  for (int64_t l = 0; l < layers; ++l) taps.push_back(torch::randn({batch, 1 + grid * grid, width}));
  return taps;
}

}  // namespace

TEST(TextGuidedMap, AtGridResolutionIsPerPatchSoftmaxOfScaledCosine) {
  torch::manual_seed(0);
  auto patches = torch::randn({2, 16, 8});
  auto f_text = unit(torch::randn({2, 8}));
  auto map = anomaly::text_guided_map(patches, f_text, 4);  // size == grid: interpolation is identity
  ASSERT_EQ(map.sizes(), (std::vector<int64_t>{2, 2, 4, 4}));
  auto logits = 100.0 * torch::matmul(unit(patches), f_text.t());      // [2, 16, 2]
  auto expected = torch::softmax(logits, -1).select(-1, 1).reshape({2, 4, 4});
  // Both in fp32; the only difference is summation order in the cosine.
  EXPECT_LT((map.select(1, 1) - expected).abs().max().item<double>(), 1e-5);
  EXPECT_LT((map.sum(1) - 1).abs().max().item<double>(), 1e-6);
}

TEST(TextGuidedMap, UpsamplesWithAlignedCorners) {
  torch::manual_seed(1);
  auto patches = torch::randn({1, 4, 8});
  auto f_text = unit(torch::randn({2, 8}));
  auto small = anomaly::text_guided_map(patches, f_text, 2);
  auto big = anomaly::text_guided_map(patches, f_text, 9);
  // align_corners keeps the grid's corner values at the output corners (up to softmax after
  // interpolation, which is exact at grid points).
  for (auto [y, x, Y, X] : {std::tuple{0, 0, 0, 0}, {0, 1, 0, 8}, {1, 0, 8, 0}, {1, 1, 8, 8}}) {
    EXPECT_NEAR(small[0][1][y][x].item<double>(), big[0][1][Y][X].item<double>(), 1e-6);
  }
}

TEST(VisualDecoder, ParameterCountIsFourLinearLayers) {
  anomaly::VisualDecoder decoder(1280, 1024, 4);
  int64_t count = 0;
  for (const auto& p : decoder->parameters()) count += p.numel();
  EXPECT_EQ(count, 4 * (1280 * 1024 + 1024));  // METHOD §1.4: 5.25 M for ImageBind-Huge
}

TEST(VisualDecoder, LoadsAnomalyGptKeyNamesAndMatchesManualForward) {
  const int64_t dv = 12, d = 6, layers = 2, grid = 3;
  torch::manual_seed(2);
  io::TensorMap delta;
  for (int64_t l = 0; l < layers; ++l) {
    delta["image_decoder.fc." + std::to_string(l) + ".weight"] = torch::randn({d, dv});
    delta["image_decoder.fc." + std::to_string(l) + ".bias"] = torch::randn({d});
  }
  delta["llama_proj.weight"] = torch::randn({4, 4});  // other delta keys are ignored
  anomaly::VisualDecoder decoder(dv, d, layers);
  anomaly::load_decoder(decoder, delta, "delta.pt");
  auto taps = random_taps(1, grid, dv, layers, 3);
  auto f_text = unit(torch::randn({2, d}));
  torch::NoGradGuard no_grad;
  auto maps = decoder->forward(taps, f_text, grid);
  torch::Tensor expected = torch::zeros({grid * grid});
  for (int64_t l = 0; l < layers; ++l) {
    auto p = torch::matmul(taps[l][0].slice(0, 1), delta["image_decoder.fc." + std::to_string(l) + ".weight"].t()) +
             delta["image_decoder.fc." + std::to_string(l) + ".bias"];
    expected += torch::softmax(100.0 * torch::matmul(unit(p), f_text.t()), -1).select(-1, 1);
  }
  expected /= layers;
  EXPECT_LT((maps.fused.reshape({-1}) - expected).abs().max().item<double>(), 1e-5);
  ASSERT_EQ(maps.layers.size(), 2u);
}

TEST(VisualDecoder, WrongShapeNamesTheKey) {
  io::TensorMap bad{{"fc.0.weight", torch::zeros({6, 11})}, {"fc.0.bias", torch::zeros({6})}};
  anomaly::VisualDecoder decoder(12, 6, 1);
  try {
    anomaly::load_decoder(decoder, bad, "dec.safetensors");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'fc.0.weight' has shape [6,11], expected [6,12]"), std::string::npos) << e.what();
  }
  io::TensorMap missing{{"fc.0.weight", torch::zeros({6, 12})}};
  EXPECT_THROW(anomaly::load_decoder(decoder, missing, "dec.safetensors"), InputError);
}

TEST(VisualDecoder, SavedTensorsRoundTrip) {
  anomaly::VisualDecoder a(5, 3, 2), b(5, 3, 2);
  anomaly::load_decoder(b, anomaly::decoder_tensors(a), "memory");
  auto taps = random_taps(1, 2, 5, 2, 4);
  auto f_text = unit(torch::randn({2, 3}));
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(a->forward(taps, f_text, 8).fused, b->forward(taps, f_text, 8).fused));
}

TEST(MemoryBank, QueryIdenticalToReferenceGivesZeroMap) {
  auto taps = random_taps(1, 4, 16, 3, 5);
  anomaly::MemoryBank bank;
  bank.add(taps);
  auto map = bank.query(taps, 32);
  // Cosine of a vector with itself is 1 up to fp32 rounding of the norm.
  EXPECT_LT(map.abs().max().item<double>(), 1e-5);
}

TEST(MemoryBank, ForeignPatchIsTheMaximum) {
  auto reference = random_taps(1, 4, 16, 2, 6);
  auto query = reference;
  torch::manual_seed(7);
  const int64_t foreign = 1 + 2 * 4 + 1;  // row 2, column 1 of the 4×4 grid
  for (auto& t : query) {
    t = t.clone();
    t[0][foreign] = torch::randn({16}) * 3;
  }
  anomaly::MemoryBank bank;
  bank.add(reference);
  auto map = bank.query(query, 4);  // grid resolution: one value per patch
  auto flat = map.reshape({-1});
  EXPECT_EQ(flat.argmax().item<int64_t>(), foreign - 1);
  // Brute force: 1 − mean over layers of max cosine.
  double expected = 0;
  for (size_t l = 0; l < query.size(); ++l) {
    auto q = unit(query[l][0][foreign]);
    auto bank_rows = unit(reference[l][0].slice(0, 1));
    expected += torch::matmul(bank_rows, q).max().item<double>();
  }
  expected = 1 - expected / query.size();
  EXPECT_NEAR(flat[foreign - 1].item<double>(), expected, 1e-5);
}

TEST(MemoryBank, ChunkSizeDoesNotChangeTheResult) {
  auto reference = random_taps(2, 4, 8, 2, 8);
  auto query = random_taps(3, 4, 8, 2, 9);
  anomaly::MemoryBank whole(100000), chunked(7);
  whole.add(reference);
  chunked.add(reference);
  EXPECT_LT((whole.query(query, 16) - chunked.query(query, 16)).abs().max().item<double>(), 1e-6);
  EXPECT_EQ(whole.size(), 2 * 16);
}

TEST(MemoryBank, RejectsEmptyBankAndMismatchedLayers) {
  anomaly::MemoryBank bank;
  EXPECT_THROW(bank.query(random_taps(1, 2, 4, 1, 1), 4), InputError);
  bank.add(random_taps(1, 2, 4, 2, 1));
  EXPECT_THROW(bank.query(random_taps(1, 2, 4, 1, 1), 4), InputError);
}

TEST(Rotations, FourViewsOfEachReference) {
  auto pixels = torch::arange(2 * 3 * 4 * 4, torch::kFloat32).reshape({2, 3, 4, 4});
  auto views = anomaly::with_rotations(pixels);
  ASSERT_EQ(views.size(0), 8);
  EXPECT_TRUE(torch::equal(views.slice(0, 0, 2), pixels));
  // 90° counter-clockwise: the top-right pixel moves to the top-left.
  EXPECT_EQ(views[2][0][0][0].item<float>(), pixels[0][0][0][3].item<float>());
}

TEST(ZeroShot, UsesTheGivenProjection) {
  auto taps = random_taps(1, 2, 4, 2, 10);
  auto f_text = unit(torch::randn({2, 4}));
  auto identity = anomaly::zero_shot_maps(taps, [](const torch::Tensor& t) { return t; }, f_text, 2);
  auto flipped = anomaly::zero_shot_maps(taps, [](const torch::Tensor& t) { return -t; }, f_text, 2);
  // Negating the projection swaps which prompt is closer: the maps are complementary per layer.
  EXPECT_LT((identity.fused + flipped.fused - 1).abs().max().item<double>(), 1e-5);
}

TEST(ImageScores, MaxAndTopKMean) {
  auto maps = torch::tensor({0.1f, 0.9f, 0.5f, 0.7f}).reshape({1, 1, 2, 2});
  EXPECT_FLOAT_EQ(anomaly::image_scores(maps).item<float>(), 0.9f);
  EXPECT_FLOAT_EQ(anomaly::image_scores(maps, 2).item<float>(), 0.8f);
  EXPECT_LT((anomaly::blend(maps, torch::zeros_like(maps)) - maps / 2).abs().max().item<double>(), 1e-7);
}

TEST(MemoryBank, Bf16BankStaysCloseToFp32) {
  auto reference = random_taps(2, 4, 32, 2, 11);
  auto query = random_taps(1, 4, 32, 2, 12);
  anomaly::MemoryBank fp32, bf16(1024, torch::kBFloat16);
  fp32.add(reference);
  bf16.add(reference);
  // bf16 keeps 8 significant bits: a cosine in [-1, 1] is off by at most ~2^-8 plus rounding of the dot product.
  EXPECT_LT((fp32.query(query, 4) - bf16.query(query, 4)).abs().max().item<double>(), 2e-2);
}
