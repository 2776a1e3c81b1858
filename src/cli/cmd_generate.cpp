// `iadgpt generate`: text from a prompt (or token ids) with greedy decoding or sampling.
#include <fmt/format.h>

#include <iostream>

#include "cli/commands.h"
#include "io/error.h"
#include "llm/generate.h"
#include "llm/options.h"
#include "llm/tokenizer.h"

namespace iadgpt::cli {

void add_generate(CLI::App& app) {
  struct Opts {
    std::string model, lora, dtype = "auto", prompt, tokens, tokenizer;
    double lora_alpha = 32;
    bool bos = false, json = false, ignore_eos = false;
    int64_t max_tokens = 128, ctx = 0;
    llm::SamplingParams sampling;
    std::vector<std::string> stop;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("generate", "Generate text with the LLM (greedy or sampled)");
  cmd->add_option("--model", o->model, "Hugging Face model directory (config.json, weights, tokenizer.model)")->required();
  cmd->add_option("--lora", o->lora, "PEFT adapter directory or PandaGPT-style delta file, merged");
  cmd->add_option("--lora-alpha", o->lora_alpha, "LoRA alpha for delta files")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "weights: f32 | bf16 | auto (config torch_dtype float32 -> f32, else bf16)")
      ->capture_default_str();
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.model (default: the one in --model)");
  auto* prompt = cmd->add_option("--prompt", o->prompt, "prompt text (no chat template applied)");
  auto* tokens = cmd->add_option("--tokens", o->tokens, "prompt as comma-separated token ids");
  prompt->excludes(tokens);
  cmd->add_flag("--bos", o->bos, "prepend the BOS token");
  cmd->add_option("--max-tokens", o->max_tokens, "tokens to generate at most")->capture_default_str();
  cmd->add_option("--temperature", o->sampling.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", o->sampling.top_k, "0 = off")->capture_default_str();
  cmd->add_option("--top-p", o->sampling.top_p, "1 = off")->capture_default_str();
  cmd->add_option("--repeat-penalty", o->sampling.repetition_penalty, "1 = off")->capture_default_str();
  cmd->add_option("--seed", o->sampling.seed, "sampling seed")->capture_default_str();
  cmd->add_option("--stop", o->stop, "stop string (repeatable), e.g. ###");
  cmd->add_flag("--ignore-eos", o->ignore_eos, "keep generating after EOS");
  cmd->add_option("--ctx", o->ctx, "context length (0 = prompt + max-tokens)")->capture_default_str();
  cmd->add_flag("--json", o->json, R"(print {"tokens": [...], "text": "..."} instead of streaming text)");
  cmd->callback([o] {
    if (o->prompt.empty() && o->tokens.empty() && !o->bos)
      throw InputError("generate: give --prompt or --tokens (or --bos alone to start from BOS)");
    if (o->max_tokens < 0) throw InputError("--max-tokens must be >= 0");
    llm::Sampler check(o->sampling);  // validates the sampling flags before the model loads
    auto tok = llm::Tokenizer::from_path(o->tokenizer.empty() ? std::filesystem::path(o->model) : std::filesystem::path(o->tokenizer));
    std::vector<int64_t> ids;
    if (o->bos) ids.push_back(tok.bos_id());
    auto body = o->tokens.empty() ? tok.encode(o->prompt) : llm::parse_ids(o->tokens);
    ids.insert(ids.end(), body.begin(), body.end());
    if (ids.empty()) throw InputError("generate: the prompt is empty (use --bos to start from BOS)");

    const auto model = llm::load_model_with_lora(o->model, llm::resolve_dtype(o->dtype, o->model), o->lora, o->lora_alpha);
    llm::KvCache cache(model, o->ctx > 0 ? o->ctx : static_cast<int64_t>(ids.size()) + o->max_tokens);
    llm::GenerateOptions gen;
    gen.sampling = o->sampling;
    gen.max_tokens = o->max_tokens;
    gen.stop = o->stop;
    gen.stop_at_eos = !o->ignore_eos;
    if (!o->json) gen.on_text = [](std::string_view s) {
      std::cout << s << std::flush;
      return true;
    };
    std::vector<llm::Segment> segs{llm::Segment::tokens(ids)};
    const auto out = llm::generate(model, tok, cache, segs, gen);
    if (o->json) {
      nlohmann::json j{{"tokens", out.tokens}, {"text", out.text}, {"stop_reason", out.stop_reason},
                       {"prompt_tokens", out.prompt_tokens}};
      std::cout << j.dump() << "\n";
    } else {
      std::cout << "\n";
    }
    const auto n = static_cast<double>(out.tokens.size());
    std::cerr << fmt::format("prompt {} tokens in {:.1f} ms ({:.1f} tok/s); generated {} tokens in {:.1f} ms ({:.1f} tok/s); stop: {}\n",
                             out.prompt_tokens, out.prefill_seconds * 1e3, out.prompt_tokens / std::max(out.prefill_seconds, 1e-9),
                             out.tokens.size(), out.decode_seconds * 1e3, n / std::max(out.decode_seconds, 1e-9), out.stop_reason);
  });
}

}  // namespace iadgpt::cli
