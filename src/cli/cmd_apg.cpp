// `iadgpt apg`: the Abnormal Prompt Generator (METHOD §2). With --llm, the LLM writes keywords and
// sentences per class through the fixed script; with --builtin, the built-in library is written
// out (to look at or to edit). Either way the output is a prompts file that bundles and `detect`
// take with --prompts.
#include <fmt/format.h>

#include <iostream>

#include "anomaly/apg.h"
#include "cli/commands.h"
#include "cli/device_flag.h"
#include "io/error.h"
#include "llm/options.h"
#include "llm/sampler.h"

namespace iadgpt::cli {

void add_apg(CLI::App& app) {
  struct Opts {
    std::string llm, lora, dtype = "auto", chat_template = "vicuna_v0", out;
    DeviceFlag device;
    std::vector<std::string> classes;
    double lora_alpha = 32;
    bool builtin = false, list = false;
    anomaly::ApgOptions apg;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("apg", "Abnormal Prompt Generator: per-class defect keywords and sentences");
  cmd->add_option("--llm", o->llm, "LLM directory (config.json, weights, tokenizer.model) that writes the prompts");
  cmd->add_option("--lora", o->lora, "PEFT adapter directory or PandaGPT-style delta file, merged");
  cmd->add_option("--lora-alpha", o->lora_alpha, "LoRA alpha for delta files")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "LLM weights: f32 | bf16 | auto")->capture_default_str();
  o->device.add_to(*cmd);
  cmd->add_option("--template", o->chat_template, "chat template: vicuna_v0 | vicuna_v1.1 | llama2 | plain")
      ->capture_default_str();
  cmd->add_option("--class", o->classes, "object class (repeatable), e.g. hazelnut, metal_nut, pcb1");
  cmd->add_option("--temperature", o->apg.temperature, "sampling temperature")->capture_default_str();
  cmd->add_option("--top-p", o->apg.top_p, "nucleus sampling")->capture_default_str();
  cmd->add_option("--seed", o->apg.seed, "sampling seed (fixed: the same file every run)")->capture_default_str();
  cmd->add_option("--max-tokens", o->apg.max_tokens, "reply length limit per class")->capture_default_str();
  cmd->add_flag("--builtin", o->builtin, "write the built-in library's entries instead of asking an LLM");
  cmd->add_flag("--list", o->list, "list the classes the built-in library covers and exit");
  cmd->add_option("--out", o->out, "prompts file to write (JSON)");
  cmd->callback([o] {
    const auto device = o->device.device();  // checked before anything loads
    if (o->list) {
      for (const auto& name : anomaly::builtin_classes()) std::cout << name << "\n";
      return;
    }
    if (o->classes.empty()) throw InputError("apg: give at least one --class");
    if (o->out.empty()) throw InputError("apg: give --out FILE");
    if (o->builtin == !o->llm.empty()) throw InputError("apg: give exactly one of --llm DIR or --builtin");
    if (o->apg.max_tokens <= 0) throw InputError("apg: --max-tokens must be > 0");
    std::map<std::string, anomaly::AbnormalPrompts> result;
    if (o->builtin) {
      for (const auto& name : o->classes) {
        auto prompts = anomaly::builtin_prompts(name);
        if (!prompts)
          throw InputError(fmt::format("apg: the built-in library has no class '{}' (see `iadgpt apg --list`)", name));
        result[name] = *prompts;
      }
    } else {
      o->apg.chat_template = llm::parse_chat_template(o->chat_template);
      llm::Sampler check(llm::SamplingParams{.temperature = o->apg.temperature, .top_p = o->apg.top_p});
      auto tokenizer = llm::Tokenizer::from_path(o->llm);
      auto model = llm::load_model_with_lora(o->llm, llm::resolve_dtype(o->dtype, o->llm), o->lora, o->lora_alpha);
      llm::move_model(model, device);
      for (const auto& name : o->classes) {
        std::cerr << fmt::format("apg: {} ...\n", name);
        result[name] = anomaly::generate_prompts(model, tokenizer, name, o->apg);
        std::cerr << fmt::format("apg: {}: {} keywords\n", name, result[name].keywords.size());
      }
    }
    anomaly::write_prompts_file(o->out, result);
    std::cout << fmt::format("wrote {} ({} classes)\n", o->out, result.size());
  });
}

}  // namespace iadgpt::cli
