#include "model/prompt.h"

#include <fmt/format.h>

namespace iadgpt::model {

std::string anomalygpt_conversation(std::span<const llm::Turn> history, std::string_view question) {
  std::string s;
  for (size_t i = 0; i < history.size(); ++i)
    s += fmt::format("{}{}\n### Assistant: {}\n###", i == 0 ? "" : " Human: ", history[i].user, history[i].assistant);
  s += history.empty() ? std::string(question) : fmt::format(" Human: {}", question);
  return s;
}

std::vector<llm::Segment> anomalygpt_prompt(const llm::Tokenizer& tok, const torch::Tensor& image_rows,
                                            const torch::Tensor& expert_rows, std::span<const llm::Turn> history,
                                            std::string_view question) {
  using llm::Segment;
  std::vector<Segment> segs;
  segs.push_back(Segment::tokens(tok.encode("### Human: <Img>", /*bos=*/true)));
  segs.push_back(Segment::rows(image_rows));
  segs.push_back(Segment::tokens(tok.encode("</Img> ")));
  if (expert_rows.defined() && expert_rows.size(0) > 0) segs.push_back(Segment::rows(expert_rows));
  segs.push_back(Segment::tokens(tok.encode(anomalygpt_conversation(history, question) + "\n### Assistant:")));
  return segs;
}

}  // namespace iadgpt::model
