// `iadgpt chat`: interactive multi-turn chat with streaming output. Each turn re-renders the whole
// conversation with the template and reuses the KV cache for the common prefix, so only the new
// text is prefilled. Commands: /reset (forget the history), /quit (or end of input).
#include <fmt/format.h>
#include <unistd.h>

#include <iostream>

#include "cli/commands.h"
#include "cli/device_flag.h"
#include "io/error.h"
#include "llm/chat.h"
#include "llm/generate.h"
#include "llm/options.h"
#include "llm/tokenizer.h"
#include "image/decode.h"
#include "model/pipeline.h"

namespace iadgpt::cli {
namespace {

// Rolls the cache back to the longest common prefix of what it holds and `ids`; returns the rest.
std::vector<int64_t> reuse_prefix(llm::KvCache& cache, std::vector<int64_t>& cached, const std::vector<int64_t>& ids) {
  size_t n = 0;
  // Keep at least one token to feed: the logits for the answer come from the last prompt token.
  while (n < cached.size() && n + 1 < ids.size() && cached[n] == ids[n]) ++n;
  cache.truncate(static_cast<int64_t>(n));
  cached.resize(n);
  return {ids.begin() + static_cast<std::ptrdiff_t>(n), ids.end()};
}

// The next user line: the --message list first (non-interactive), else stdin.
struct Lines {
  std::vector<std::string> messages;
  size_t next = 0;
  bool interactive = false;
  bool get(std::string& line) {
    if (!messages.empty()) {
      if (next >= messages.size()) return false;
      line = messages[next++];
      return true;
    }
    if (interactive) std::cerr << "> " << std::flush;
    return static_cast<bool>(std::getline(std::cin, line));
  }
};

// `chat --model BUNDLE --image IMG`: a conversation about one image with the IAD-GPT model. The
// first message goes after the class description (METHOD §1.9), later ones are plain turns; the
// image tokens, the history and the KV cache are kept between turns.
void run_bundle_chat(const std::filesystem::path& dir, const std::string& image_path, const std::vector<std::string>& references,
                     const std::string& class_name, Lines lines, int64_t max_tokens, const llm::SamplingParams& sampling,
                     const DeviceFlag& device) {
  if (image_path.empty()) throw InputError("chat with a model bundle needs --image");
  auto bundle = model::read_bundle(dir);
  device.apply(bundle.device);
  model::IadGpt m(bundle);
  m.set_class(class_name);
  if (!references.empty()) {
    std::vector<cv::Mat> refs;
    for (const auto& r : references) refs.push_back(image::decode_file(r));
    m.set_references(refs);
  }
  const auto img = image::decode_file(image_path);
  std::cerr << fmt::format("chat: IAD-GPT bundle {}, image {} ({}x{}); /reset, /quit\n", dir.string(), image_path, img.cols,
                           img.rows);
  model::InspectOptions opt;
  opt.max_tokens = max_tokens;
  opt.temperature = sampling.temperature;
  opt.seed = sampling.seed;
  opt.on_text = [](std::string_view s) {
    std::cout << s << std::flush;
    return true;
  };
  bool inspected = false;
  std::string line;
  while (lines.get(line)) {
    if (line == "/quit") break;
    if (line == "/reset") {
      inspected = false;
      m.reset_conversation();
      continue;
    }
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (!inspected) {
      opt.question = line;
      const auto r = m.inspect(img, opt);
      std::cout << "\n" << std::flush;
      std::cerr << fmt::format("[p_yes {:.4f}, score {:.4f}, position \"{}\", defect type \"{}\"; encode {:.0f} ms, maps {:.0f} ms, "
                               "prefill {:.0f} ms, generate {:.0f} ms]\n",
                               r.p_yes, r.score, r.position, r.defect_type, r.timings.encode * 1e3, r.timings.maps * 1e3,
                               r.timings.prefill * 1e3, r.timings.generate * 1e3);
      inspected = true;
    } else {
      ++opt.seed;  // a different sampling stream per turn, reproducible from --seed
      m.ask(line, opt);
      std::cout << "\n" << std::flush;
    }
  }
}

}  // namespace

void add_chat(CLI::App& app) {
  struct Opts {
    std::string model, lora, dtype = "auto", tmpl = "vicuna_v0", system, tokenizer, image, class_name;
    std::vector<std::string> references, messages;
    bool system_set = false;
    double lora_alpha = 32;
    int64_t max_tokens = 512, ctx = 2048;
    llm::SamplingParams sampling{.temperature = 0.0};
    DeviceFlag device;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("chat", "Interactive multi-turn chat with the LLM (streaming)");
  cmd->add_option("--model", o->model, "Hugging Face model directory, or an IAD-GPT model bundle (with --image)")->required();
  cmd->add_option("--image", o->image, "Image to talk about (model bundle)");
  cmd->add_option("--reference", o->references, "Normal reference images (model bundle, few-shot)");
  cmd->add_option("--class", o->class_name, "Object class (model bundle; default: object)");
  cmd->add_option("--message", o->messages, "User message (repeatable): run these turns instead of reading stdin");
  cmd->add_option("--lora", o->lora, "PEFT adapter directory or PandaGPT-style delta file, merged");
  cmd->add_option("--lora-alpha", o->lora_alpha, "LoRA alpha for delta files")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "weights: f32 | bf16 | auto")->capture_default_str();
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.model (default: the one in --model)");
  cmd->add_option("--template", o->tmpl, "vicuna_v0 | vicuna_v1.1 | llama2 | plain")->capture_default_str();
  cmd->add_option("--system", o->system, "system prompt (default: the template's)");
  cmd->add_option("--max-tokens", o->max_tokens, "tokens per answer at most")->capture_default_str();
  cmd->add_option("--ctx", o->ctx, "context length")->capture_default_str();
  cmd->add_option("--temperature", o->sampling.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", o->sampling.top_k, "0 = off")->capture_default_str();
  cmd->add_option("--top-p", o->sampling.top_p, "1 = off")->capture_default_str();
  cmd->add_option("--repeat-penalty", o->sampling.repetition_penalty, "1 = off")->capture_default_str();
  cmd->add_option("--seed", o->sampling.seed, "sampling seed")->capture_default_str();
  o->device.add_to(*cmd, "cpu, or the bundle's");
  cmd->callback([o, cmd] {
    Lines lines{o->messages, 0, o->messages.empty() && isatty(STDIN_FILENO)};
    if (std::filesystem::exists(std::filesystem::path(o->model) / "iadgpt.json")) {
      llm::Sampler check(o->sampling);
      return run_bundle_chat(o->model, o->image, o->references, o->class_name, lines, o->max_tokens, o->sampling, o->device);
    }
    if (!o->image.empty()) throw InputError(fmt::format("--image needs a model bundle; {} has no iadgpt.json", o->model));
    const auto tmpl = llm::parse_chat_template(o->tmpl);
    const std::string system = cmd->count("--system") ? o->system : llm::default_system_prompt(tmpl);
    llm::Sampler check(o->sampling);
    auto tok = llm::Tokenizer::from_path(o->tokenizer.empty() ? std::filesystem::path(o->model) : std::filesystem::path(o->tokenizer));
    const auto device = o->device.device();
    auto model = llm::load_model_with_lora(o->model, llm::resolve_dtype(o->dtype, o->model), o->lora, o->lora_alpha);
    llm::move_model(model, device);
    llm::KvCache cache(model, o->ctx);
    std::vector<int64_t> cached;  // ids whose keys/values the cache holds
    std::vector<llm::Turn> history;

    std::cerr << fmt::format("chat: {} ({} layers, width {}), template {}; /reset, /quit\n", o->model,
                             model.config.num_layers, model.config.hidden_size, llm::chat_template_name(tmpl));
    std::string line;
    uint64_t turn_seed = o->sampling.seed;
    while (true) {
      if (!lines.get(line) || line == "/quit") break;
      if (line == "/reset") {
        history.clear();
        cached.clear();
        cache.clear();
        continue;
      }
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      const auto ids = llm::render_chat(tok, tmpl, system, history, line);
      auto fresh = reuse_prefix(cache, cached, ids);
      if (static_cast<int64_t>(ids.size()) + 1 >= cache.capacity())
        throw InputError(fmt::format("the conversation ({} tokens) no longer fits the context ({}); use /reset or --ctx",
                                     ids.size(), cache.capacity()));
      llm::GenerateOptions gen;
      gen.sampling = o->sampling;
      gen.max_tokens = o->max_tokens;
      gen.stop = llm::stop_strings(tmpl);
      gen.sampling.seed = turn_seed++;
      bool started = false;
      gen.on_text = [&](std::string_view s) {
        if (!started) {  // the answer starts after the template's space
          while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
          started = !s.empty();
        }
        std::cout << s << std::flush;
        return true;
      };
      std::vector<llm::Segment> segs{llm::Segment::tokens(fresh)};
      const auto out = llm::generate(model, tok, cache, segs, gen);
      std::cout << "\n" << std::flush;
      cached.insert(cached.end(), fresh.begin(), fresh.end());
      // Every generated token but the last went through the cache.
      if (!out.tokens.empty()) cached.insert(cached.end(), out.tokens.begin(), out.tokens.end() - 1);
      history.push_back({line, llm::clean_answer(out.text)});
      std::cerr << fmt::format("[{} prompt tokens ({} new) {:.0f} ms, {} tokens {:.1f} tok/s, {}]\n", ids.size(),
                               fresh.size(), out.prefill_seconds * 1e3, out.tokens.size(),
                               out.tokens.size() / std::max(out.decode_seconds, 1e-9), out.stop_reason);
    }
  });
}

}  // namespace iadgpt::cli
