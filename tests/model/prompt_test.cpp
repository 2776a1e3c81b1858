// model::anomalygpt_prompt / anomalygpt_conversation: the METHOD §1.9 layout, token by token.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vector>

#include "common/shared.h"
#include "llm/tokenizer.h"
#include "model/prompt.h"

namespace iadgpt {
namespace t = iadgpt::test;

TEST(Prompt, AnomalyGptPromptFollowsMethodLayout) {
  auto tok = llm::Tokenizer::from_path(t::data("tokenizers/llama2c/tokenizer.model"));
  std::vector<llm::Turn> history{{"Is there any anomaly in the image?", "No, there is no anomaly in the image."}};
  EXPECT_EQ(model::anomalygpt_conversation(history, "Are you sure?"),
            "Is there any anomaly in the image?\n### Assistant: No, there is no anomaly in the image.\n### Human: Are you sure?");
  auto segs = model::anomalygpt_prompt(tok, torch::zeros({1, 4096}), torch::zeros({18, 4096}), {}, "Is there any anomaly?");
  ASSERT_EQ(segs.size(), 5u);
  EXPECT_EQ(segs[0].ids, tok.encode("### Human: <Img>", true));
  EXPECT_EQ(segs[1].length(), 1);
  EXPECT_EQ(segs[2].ids, tok.encode("</Img> "));
  EXPECT_EQ(segs[3].length(), 18);
  EXPECT_EQ(segs[4].ids, tok.encode("Is there any anomaly?\n### Assistant:"));
  EXPECT_EQ(segs[0].ids.front(), 1);
}

}  // namespace iadgpt
