#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include "common/method_reference.h"
#include "io/error.h"
#include "model/adapters.h"

using namespace iadgpt;

TEST(MultiMaskFusion, HasTheMethodParameterCountAt4096) {
  model::MultiMaskFusion mmf(4096);
  // METHOD §1.8: 880 + 9 280 + 147 712 + 1 180 160 + 4 719 616 + (1024·H + H) + 9·H.
  EXPECT_EQ(model::parameter_count(*mmf), 10292912);
}

TEST(MultiMaskFusion, MakesEighteenTokensWithBaseTokensFirst) {
  model::MultiMaskFusion mmf(32);
  torch::NoGradGuard no_grad;
  auto out = mmf->forward(torch::rand({2, 6, 224, 224}));
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{2, 18, 32}));
  EXPECT_TRUE(torch::equal(out[1].slice(0, 0, 9), mmf->base_tokens));
  EXPECT_THROW(mmf->forward(torch::rand({1, 5, 224, 224})), InputError);
}

// METHOD §1.8 recomputed in float64 with plain tensor ops (tests/common/method_reference.h) from the
// module's state dict: a dropped stage, ReLU or pool, a wrong cell order, a missing bias or base
// token all show as a difference.
TEST(MultiMaskFusion, OutputEqualsThePlainTensorComputationOfMethod18) {
  model::MultiMaskFusion mmf(24);
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(5);
  // He-scaled weights and non-zero biases: with torch's default init the activations shrink ~2.5×
  // per stage and the tokens would hardly depend on the masks, hiding a wrong stage.
  for (auto& p : mmf->named_parameters()) {
    auto& t = p.value();
    if (p.key().find("weight") != std::string::npos) t.normal_(0, std::sqrt(2.0 / static_cast<double>(t[0].numel())), gen);
    else t.normal_(0, 0.1, gen);
  }
  auto masks = torch::rand({2, 6, 224, 224}, gen);
  masks[1].select(0, 5).zero_();  // the second image without references (M_fs = 0)
  const auto expected = test::reference::multi_mask_fusion(model::parameter_tensors(*mmf), masks);
  const auto got = mmf->forward(masks);
  ASSERT_EQ(got.sizes(), expected.sizes());
  // The masks reach the tokens (else the comparison would only check the biases): the map tokens
  // differ between the two images and between cells by O(1).
  EXPECT_GT((expected[0].slice(0, 9) - expected[1].slice(0, 9)).abs().max().item<double>(), 0.1);
  EXPECT_GT((expected[0][9] - expected[0][17]).abs().max().item<double>(), 0.1);
  // fp32 module vs float64 reference: convolutions of up to 512·9 terms over five stages and a
  // 1024-term projection keep fp32's relative error near 1e-5; 1e-4 of the token scale.
  const double scale = expected.abs().max().item<double>();
  EXPECT_LT((got.to(torch::kFloat64) - expected).abs().max().item<double>(), 1e-4 * scale) << "scale " << scale;
}

TEST(TextGuidedEnhancer, ParameterCountAndUntrainedEqualsLlamaProj) {
  model::TextGuidedEnhancer tge(1024, 4096);
  EXPECT_EQ(tge->enhancer_parameter_count(), 2 * (2 * 1024 * 4096 + 4096) + 1);  // 16.79 M
  EXPECT_EQ(model::parameter_count(*tge->llama_proj), 1024 * 4096 + 4096);

  model::TextGuidedEnhancer small(8, 16);
  torch::manual_seed(0);
  auto e = torch::nn::functional::normalize(torch::randn({3, 8}), torch::nn::functional::NormalizeFuncOptions().dim(-1));
  auto un = torch::randn({5, 8}), ua = torch::randn({4, 8}), f = torch::randn({2, 8});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::allclose(small->forward(e, un, ua, f), small->llama_proj->forward(e)));
}

TEST(TextGuidedEnhancer, GateAndAttentionFollowTheMethod) {
  model::TextGuidedEnhancer tge(4, 3);
  torch::manual_seed(1);
  torch::NoGradGuard no_grad;
  for (auto& p : tge->parameters()) p.copy_(torch::randn_like(p));
  auto e = torch::randn({1, 4}), un = torch::randn({2, 4}), ua = torch::randn({3, 4}), f = torch::randn({2, 4});
  // Independent recomputation of METHOD §1.7.
  auto side = [&](const torch::Tensor& u, torch::nn::Linear& path) {
    auto a = torch::softmax(torch::matmul(u, e[0]) / 0.07, 0);
    auto c = torch::matmul(a, u);
    return torch::matmul(path->weight, torch::cat({e[0], c})) + path->bias;
  };
  auto gate = torch::softmax(torch::stack({torch::dot(e[0], f[0]), torch::dot(e[0], f[1])}) * tge->gate_log_scale.exp(), 0);
  auto expected = torch::matmul(tge->llama_proj->weight, e[0]) + tge->llama_proj->bias +
                  gate[0] * side(un, tge->normal_path) + gate[1] * side(ua, tge->abnormal_path);
  EXPECT_LT((tge->forward(e, un, ua, f)[0] - expected).abs().max().item<double>(), 1e-4);
}

TEST(PromptLearner, AnomalyGptShapesAndKeys) {
  model::PromptLearner learner(64);
  auto keys = model::parameter_tensors(*learner, "prompt_learner.");
  EXPECT_TRUE(keys.count("prompt_learner.base_prompts"));
  EXPECT_TRUE(keys.count("prompt_learner.meta_net.0.weight"));
  EXPECT_TRUE(keys.count("prompt_learner.meta_net.15.weight"));  // the final 5×5 conv
  torch::NoGradGuard no_grad;
  EXPECT_EQ(learner->forward(torch::rand({1, 1, 224, 224})).sizes(), (std::vector<int64_t>{1, 18, 64}));
}

TEST(LoadParameters, RoundTripsAndNamesBadKeys) {
  model::MultiMaskFusion a(8), b(8);
  model::load_parameters(*b, model::parameter_tensors(*a, "mmf."), "mmf.", "adapters.safetensors");
  EXPECT_TRUE(torch::equal(a->base_tokens, b->base_tokens));
  auto tensors = model::parameter_tensors(*a, "mmf.");
  tensors["mmf.cell_proj.weight"] = torch::zeros({8, 1023});
  try {
    model::load_parameters(*b, tensors, "mmf.", "adapters.safetensors");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'mmf.cell_proj.weight' has shape [8,1023], expected [8,1024]"), std::string::npos) << e.what();
  }
}
