#include "llm/chat.h"

#include <fmt/format.h>

#include "io/error.h"

namespace iadgpt::llm {
namespace {

// A rendered prompt is text pieces and special tokens; pieces are tokenized one by one (as
// FastChat/Meta do, where a special token splits the string), each without BOS.
struct Piece {
  std::string text;
  int special = 0;  // 1 = BOS, 2 = EOS; 0 = text
};

std::vector<Piece> render(ChatTemplate t, std::string_view system, std::span<const Turn> history, std::string_view user) {
  std::vector<Piece> out;
  switch (t) {
    case ChatTemplate::VicunaV0: {
      // PandaGPT: first turn "### Human: q\n### Assistant:", answers " a\n###", later turns " Human: q\n### Assistant:".
      std::string s = system.empty() ? "" : std::string(system) + "\n";
      bool first = true;
      auto ask = [&](std::string_view q) {
        s += first ? fmt::format("### Human: {}\n### Assistant:", q) : fmt::format(" Human: {}\n### Assistant:", q);
        first = false;
      };
      for (const auto& turn : history) {
        ask(turn.user);
        s += fmt::format(" {}\n###", turn.assistant);
      }
      ask(user);
      out.push_back({"", 1});
      out.push_back({s});
      break;
    }
    case ChatTemplate::VicunaV11: {
      // FastChat "vicuna_v1.1": system + " USER: q ASSISTANT: a</s>USER: q2 ASSISTANT:".
      out.push_back({"", 1});
      std::string s = std::string(system) + " ";
      for (const auto& turn : history) {
        s += fmt::format("USER: {} ASSISTANT: {}", turn.user, turn.assistant);
        out.push_back({s});
        out.push_back({"", 2});
        s.clear();
      }
      out.push_back({s + fmt::format("USER: {} ASSISTANT:", user)});
      break;
    }
    case ChatTemplate::Llama2: {
      // Meta's chat_completion: each finished turn "<s>[INST] q [/INST] a </s>", the system prompt
      // wrapped in <<SYS>> inside the first user message.
      auto first_user = [&](std::string_view q) {
        return system.empty() ? std::string(q) : fmt::format("<<SYS>>\n{}\n<</SYS>>\n\n{}", system, q);
      };
      bool first = true;
      for (const auto& turn : history) {
        out.push_back({"", 1});
        out.push_back({fmt::format("[INST] {} [/INST] {} ", first ? first_user(turn.user) : turn.user, turn.assistant)});
        out.push_back({"", 2});
        first = false;
      }
      out.push_back({"", 1});
      out.push_back({fmt::format("[INST] {} [/INST]", first ? first_user(user) : std::string(user))});
      break;
    }
    case ChatTemplate::Plain: {
      std::string s = system.empty() ? "" : std::string(system) + "\n";
      for (const auto& turn : history) s += turn.user + "\n" + turn.assistant + "\n";
      s += user;
      out.push_back({"", 1});
      out.push_back({s});
      break;
    }
  }
  return out;
}

}  // namespace

ChatTemplate parse_chat_template(std::string_view name) {
  if (name == "vicuna_v0" || name == "v0") return ChatTemplate::VicunaV0;
  if (name == "vicuna_v1.1" || name == "vicuna" || name == "v1.1") return ChatTemplate::VicunaV11;
  if (name == "llama2" || name == "llama-2") return ChatTemplate::Llama2;
  if (name == "plain") return ChatTemplate::Plain;
  throw InputError(fmt::format("unknown chat template '{}' (expected vicuna_v0, vicuna_v1.1, llama2 or plain)", name));
}

std::string_view chat_template_name(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::VicunaV0: return "vicuna_v0";
    case ChatTemplate::VicunaV11: return "vicuna_v1.1";
    case ChatTemplate::Llama2: return "llama2";
    case ChatTemplate::Plain: return "plain";
  }
  return "?";
}

std::string default_system_prompt(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::VicunaV11:
      return "A chat between a curious user and an artificial intelligence assistant. "
             "The assistant gives helpful, detailed, and polite answers to the user's questions.";
    case ChatTemplate::Llama2:
      return "You are a helpful, respectful and honest assistant.";
    default:
      return "";
  }
}

std::vector<int64_t> render_chat(const Tokenizer& tok, ChatTemplate t, std::string_view system,
                                 std::span<const Turn> history, std::string_view user) {
  std::vector<int64_t> ids;
  for (const auto& p : render(t, system, history, user)) {
    if (p.special == 1) {
      ids.push_back(tok.bos_id());
    } else if (p.special == 2) {
      ids.push_back(tok.eos_id());
    } else {
      auto part = tok.encode(p.text);
      ids.insert(ids.end(), part.begin(), part.end());
    }
  }
  return ids;
}

std::string render_chat_text(ChatTemplate t, std::string_view system, std::span<const Turn> history,
                             std::string_view user) {
  std::string s;
  for (const auto& p : render(t, system, history, user)) s += p.special == 1 ? "<s>" : p.special == 2 ? "</s>" : p.text;
  return s;
}

std::vector<std::string> stop_strings(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::VicunaV0: return {"###"};
    case ChatTemplate::VicunaV11: return {"USER:"};
    case ChatTemplate::Llama2: return {"[INST]"};
    case ChatTemplate::Plain: return {};
  }
  return {};
}

std::string clean_answer(std::string_view text) {
  const auto ws = " \t\r\n";
  const auto b = text.find_first_not_of(ws);
  if (b == std::string_view::npos) return "";
  return std::string(text.substr(b, text.find_last_not_of(ws) - b + 1));
}

}  // namespace iadgpt::llm
