// Chat templates: a conversation (history of finished turns + the new user message) rendered into
// prompt ids that end where the assistant's answer starts, plus the strings that end an answer.
//
//   auto ids = llm::render_chat(tok, llm::ChatTemplate::VicunaV0, {}, history, "Is there any anomaly?");
//   opts.stop = llm::stop_strings(llm::ChatTemplate::VicunaV0);   // {"###"}
//
// Vicuna v0 is PandaGPT/AnomalyGPT's layout (METHOD §1.9): "### Human: q\n### Assistant: a\n###".
#pragma once
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "llm/model.h"
#include "llm/tokenizer.h"

namespace iadgpt::llm {

enum class ChatTemplate {
  VicunaV0,   // ### Human: … \n### Assistant: …\n###      (PandaGPT, AnomalyGPT, IAD-GPT)
  VicunaV11,  // <system> USER: … ASSISTANT: …</s>         (Vicuna v1.1 / v1.5)
  Llama2,     // <s>[INST] <<SYS>>…<</SYS>> … [/INST] … </s> (LLaMA-2 chat)
  Plain,      // the texts one after another, one per line
};

struct Turn {
  std::string user;
  std::string assistant;
};

// "vicuna_v0", "vicuna_v1.1", "llama2", "plain" (InputError otherwise).
ChatTemplate parse_chat_template(std::string_view name);
std::string_view chat_template_name(ChatTemplate t);

// The template's default system prompt (empty for v0 and plain).
std::string default_system_prompt(ChatTemplate t);

// Prompt ids with BOS, ending where the next assistant answer begins.
std::vector<int64_t> render_chat(const Tokenizer& tok, ChatTemplate t, std::string_view system,
                                 std::span<const Turn> history, std::string_view user);

// The rendered prompt as text (special tokens written as <s> / </s>), for display and tests.
std::string render_chat_text(ChatTemplate t, std::string_view system, std::span<const Turn> history,
                             std::string_view user);

std::vector<std::string> stop_strings(ChatTemplate t);

// The answer as it should be kept in history: surrounding whitespace removed.
std::string clean_answer(std::string_view text);

}  // namespace iadgpt::llm
