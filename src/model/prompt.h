// The IAD-GPT / AnomalyGPT prompt (METHOD §1.9): the image and expert embeddings between the
// "### Human:" markers, then the conversation. `llm` keeps the generic chat templates; this layout
// belongs to the model.
//
//   auto segments = model::anomalygpt_prompt(tok, tokens.image_token, tokens.expert_tokens[0], history, question);
//   llm::first_token_probs(llm, cache, segments, {yes, no});
#pragma once

#include <torch/torch.h>

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "llm/chat.h"
#include "llm/tokenizer.h"

namespace iadgpt::model {

// AnomalyGPT's conversation text (code/web_demo.py): "q1\n### Assistant: a1\n### Human: q2 ...",
// the part of a multi-turn prompt that follows the image and expert embeddings.
std::string anomalygpt_conversation(std::span<const llm::Turn> history, std::string_view question);

// The METHOD §1.9 prompt: [BOS] tok("### Human: <Img>") E_img tok("</Img> ") E_expert
// tok(conversation + "\n### Assistant:"), tok = SentencePiece without special tokens.
// image_rows [1, D] and expert_rows [18, D] are the LLM-width embeddings.
std::vector<llm::Segment> anomalygpt_prompt(const llm::Tokenizer& tok, const torch::Tensor& image_rows,
                                            const torch::Tensor& expert_rows, std::span<const llm::Turn> history,
                                            std::string_view question);

}  // namespace iadgpt::model
