// `iadgpt bench model`: per-image latency of the whole IAD-GPT pipeline split into encode / maps
// (decoder, MMF, TGE) / LLM prefill / generation, and peak RSS. Either a real bundle (--model, on
// an image or a random one) or a real-size architecture with random weights built in memory
// (--arch imagebind-huge+llama-7b, bf16), the same stages and library calls as model::IadGpt.
#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <iostream>

#include "anomaly/maps.h"
#include "cli/commands.h"
#include "cli/detector_flags.h"
#include "cli/device_flag.h"
#include "cli/progress.h"
#include "image/decode.h"
#include "io/error.h"
#include "llm/chat.h"
#include "llm/model.h"
#include "llm/options.h"
#include "nn/quant.h"
#include "model/pipeline.h"
#include "vision/vit.h"

namespace iadgpt::cli {
namespace {


// A field of /proc/self/status in bytes ("VmHWM", "VmRSS"); -1 without /proc.
int64_t proc_status_bytes(std::string_view field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const auto prefix = std::string(field) + ":";
  while (std::getline(in, line))
    if (line.rfind(prefix, 0) == 0) return std::stoll(line.substr(prefix.size())) * 1024;
  return -1;
}

struct Opts {
  std::string arch = "imagebind-huge+llama-7b", model, image, dtype = "bf16", class_name, quant = "none";
  std::string vision_quant;  // empty: none (--model: the bundle's)
  std::vector<std::string> references;  // --model only: few-shot inference
  int64_t iters = 3, tokens = 16;
  bool json = false;
  DeviceFlag device;
};

struct Stages {
  std::vector<double> encode, maps, prefill, generate;
  std::vector<double> generated;  // tokens per image (--model: an answer may end before --tokens)
  // --model only: what a user waits for from the files on disk to the first answer.
  double load_s = -1, first_answer_s = -1, references_s = -1;
  int64_t rss_after_load = -1, references = 0;
  int64_t prompt_tokens = 0;  // --model: positions of the first turn's prompt (the prefill's length)
};

double mean_skip_first(const std::vector<double>& v) {
  // The first image warms oneDNN's kernels and first-touches buffers: report the rest when we can.
  const size_t skip = v.size() > 1 ? 1 : 0;
  double s = 0;
  for (size_t i = skip; i < v.size(); ++i) s += v[i];
  return s / static_cast<double>(v.size() - skip);
}

Stages bench_bundle(const Opts& o) {
  Stages st;
  const auto t_load = Clock::now();
  auto bundle = model::read_bundle(o.model);
  // --quant overrides the bundle's field: its LLM is then quantized at load (after its LoRAs are
  // merged); a stored quantized LLM only runs in its own format (load_bundle_llm says so).
  if (o.quant != "none") bundle.quant = o.quant;
  if (!o.vision_quant.empty()) bundle.vision_quant = o.vision_quant;
  o.device.apply(bundle.device);
  model::IadGpt m(bundle);
  m.set_class(o.class_name);
  st.load_s = since(t_load);
  st.rss_after_load = proc_status_bytes("VmRSS");
  if (!o.references.empty()) {  // few-shot: the memory bank is built once, before the first image
    const auto t_refs = Clock::now();
    std::vector<cv::Mat> refs;
    for (const auto& r : collect_images(o.references)) refs.push_back(image::decode_file(r));
    m.set_references(refs);
    st.references_s = since(t_refs);
    st.references = static_cast<int64_t>(refs.size());
  }
  cv::Mat img;
  if (!o.image.empty()) {
    img = image::decode_file(o.image);
  } else {
    img = cv::Mat(224, 224, CV_8UC3);
    cv::randu(img, 0, 255);
  }
  for (int64_t i = 0; i < o.iters; ++i) {
    model::InspectOptions opt;
    opt.max_tokens = o.tokens;
    const auto t_answer = Clock::now();
    const auto r = m.inspect(img, opt);
    if (i == 0) st.first_answer_s = since(t_answer);
    st.prompt_tokens = r.prompt_tokens;
    st.generated.push_back(static_cast<double>(r.generated_tokens));
    st.encode.push_back(r.timings.encode);
    st.maps.push_back(r.timings.maps);
    st.prefill.push_back(r.timings.prefill);
    st.generate.push_back(r.timings.generate);
  }
  return st;
}

Stages bench_arch(const Opts& o) {
  const auto plus = o.arch.find('+');
  if (plus == std::string::npos) throw InputError(fmt::format("--arch '{}': expected VISION+LLM, e.g. imagebind-huge+llama-7b", o.arch));
  const auto vcfg = vision::vit_preset(o.arch.substr(0, plus));
  const auto lcfg = llm::LlamaConfig::preset(o.arch.substr(plus + 1));
  const auto dtype = llm::resolve_dtype(o.dtype, "");
  std::cerr << fmt::format(
      "bench model: {} ({:.2f} B vision + {:.2f} B LLM parameters), {} weights, LLM quant {}, vision quant {}, {} threads\n",
      o.arch, vcfg.parameter_count() / 1e9, lcfg.parameter_count() / 1e9, o.dtype, o.quant,
      o.vision_quant.empty() ? "none" : o.vision_quant, torch::get_num_threads());
  const auto device = o.device.device();
  auto t0 = Clock::now();
  auto vweights = vision::random_weights(vcfg, dtype, 0);
  vision::quantize_weights(vweights, vision::parse_vision_quant(o.vision_quant.empty() ? "none" : o.vision_quant, "--vision-quant"));
  vision::move_weights(vweights, device);
  const auto quant = nn::parse_quant_format(o.quant, "--quant");
  if (quant != nn::QuantFormat::None && dtype != torch::kBFloat16)
    throw InputError("--quant q8|q4 needs --dtype bf16 (embeddings and the KV cache stay bf16)");
  llm::LlamaModel llm_model(lcfg, llm::random_weights(lcfg, dtype, 1), dtype, o.arch);
  llm::quantize_weights(llm_model.weights, quant);  // matrix by matrix, each bf16 source freed at once
  llm::move_model(llm_model, device);  // quantized weights: CPU only (move_model says so)
  torch::manual_seed(2);
  model::Heads heads;
  heads.decoder = anomaly::VisualDecoder(vcfg.width, vcfg.embed_dim, 4);
  heads.tge = model::TextGuidedEnhancer(vcfg.embed_dim, lcfg.hidden_size);
  heads.mmf = model::MultiMaskFusion(lcfg.hidden_size);
  for (auto* m : {static_cast<torch::nn::Module*>(heads.decoder.get()), static_cast<torch::nn::Module*>(heads.tge.get()),
                  static_cast<torch::nn::Module*>(heads.mmf.get())}) {
    m->eval();
    for (auto& p : m->parameters()) p.set_requires_grad(false);
  }
  model::move_heads(heads, device);
  auto unit = [&](int64_t n) {
    return torch::nn::functional::normalize(torch::randn({n, vcfg.embed_dim}).to(device),
                                            torch::nn::functional::NormalizeFuncOptions().dim(-1));
  };
  // AnomalyGPT's ensemble sizes: 7 normal and 5 abnormal states × 2 templates.
  anomaly::TextFeatures text = anomaly::reduce_text_features(unit(14), unit(10));
  text.normal_sentences = unit(14);
  text.abnormal_sentences = unit(10);
  std::cerr << fmt::format("weights built in {:.1f} s\n", since(t0));
  const auto taps = vcfg.default_taps();
  // A first turn of the real length: the pipeline's first prompt (class description, question,
  // "### Assistant:") with LLaMA's tokenizer is 76-98 positions for MVTec AD / VisA classes
  // (`bench model --model` prints it; bottle: 82), i.e. 63 text tokens around the 19 injected rows.
  auto ids_t = torch::randint(3, lcfg.vocab_size, {63}, torch::kInt64);
  std::vector<int64_t> ids(ids_t.data_ptr<int64_t>(), ids_t.data_ptr<int64_t>() + ids_t.numel());
  llm::KvCache cache(llm_model, 512);
  Stages st;
  for (int64_t i = 0; i < o.iters; ++i) {
    torch::NoGradGuard no_grad;
    auto pixels = torch::randn({1, 3, vcfg.image_size, vcfg.image_size}).to(device);
    // Each stage's clock is read after the device finished it (nn::synchronize; nothing on the CPU).
    auto done = [&] {
      nn::synchronize(device);
      return since(t0);
    };
    t0 = Clock::now();
    auto out = vision::vit_forward(vweights, vcfg, pixels.to(dtype), taps);
    st.encode.push_back(done());
    t0 = Clock::now();
    auto h = model::run_heads(heads, out.taps, out.embedding, {}, text, vcfg.image_size);
    st.maps.push_back(done());
    std::vector<llm::Segment> segs{llm::Segment::tokens({ids.begin(), ids.begin() + 8}), llm::Segment::rows(h.image_token),
                                   llm::Segment::tokens({ids.begin() + 8, ids.begin() + 12}),
                                   llm::Segment::rows(h.expert_tokens[0]),
                                   llm::Segment::tokens({ids.begin() + 12, ids.end()})};
    cache.clear();
    t0 = Clock::now();
    const auto prompt = llm::embed_segments(llm_model, segs);
    st.prompt_tokens = prompt.size(0);
    auto logits = llm::forward(llm_model, cache, prompt, llm::Logits::Last);
    st.prefill.push_back(done());
    t0 = Clock::now();
    for (int64_t k = 0; k < o.tokens; ++k) {
      const int64_t next[] = {logits.argmax().item<int64_t>()};
      logits = llm::forward_tokens(llm_model, cache, next, llm::Logits::Last);
    }
    st.generate.push_back(done());
    st.generated.push_back(static_cast<double>(o.tokens));
  }
  return st;
}

}  // namespace

void add_bench_model(CLI::App& bench) {
  auto o = std::make_shared<Opts>();
  auto* cmd = bench.add_subcommand("model", "IAD-GPT per-image latency (encode / maps / prefill / generate) and peak RSS");
  cmd->add_option("--arch", o->arch, "VISION+LLM presets with random weights, e.g. imagebind-huge+llama-7b")->capture_default_str();
  cmd->add_option("--model,--from-files", o->model,
                  "A model bundle instead of --arch: also times the load from its files and the first answer (e.g. "
                  "a bundle made by `bundle create --vision imagebind_huge.pth --llm vicuna-7b/ --init-random 0`)");
  cmd->add_option("--image", o->image, "Image for --model (default: random pixels)");
  cmd->add_option("--class", o->class_name, "Object class for --model");
  cmd->add_option("--reference", o->references,
                  "Normal reference images or folders for --model (few-shot inference; the memory bank is built "
                  "once, timed apart from the load)");
  cmd->add_option("--dtype", o->dtype, "weights for --arch: bf16 | f32")->capture_default_str();
  cmd->add_option("--quant", o->quant,
                  "LLM projections quantized: none | q8 | q4 (head q8; --arch needs bf16; --model: quantized at load "
                  "after its LoRAs are merged, or a stored quantized bundle's own format)")
      ->capture_default_str();
  cmd->add_option("--vision-quant", o->vision_quant,
                  "none | q8: the vision tower's matrices in int8 (CPU only; --model: overrides the bundle's field)");
  cmd->add_option("--iters", o->iters, "images (the first is a warm-up when there are several)")->capture_default_str();
  cmd->add_option("--tokens", o->tokens, "generated tokens per image")->capture_default_str();
  cmd->add_flag("--json", o->json, "print the figures as JSON");
  o->device.add_to(*cmd, "cpu, or the bundle's with --model");
  cmd->callback([o] {
    if (o->iters < 1 || o->tokens < 1) throw InputError("--iters and --tokens must be >= 1");
    nn::parse_quant_format(o->quant, "--quant");  // before any loading: a typo fails at once
    if (!o->vision_quant.empty()) vision::parse_vision_quant(o->vision_quant, "--vision-quant");
    if (!o->references.empty() && o->model.empty())
      throw InputError("--reference needs --model (the --arch presets have random weights and no references)");
    const auto st = o->model.empty() ? bench_arch(*o) : bench_bundle(*o);
    const double enc = mean_skip_first(st.encode), maps = mean_skip_first(st.maps), pre = mean_skip_first(st.prefill),
                 gen = mean_skip_first(st.generate), generated = mean_skip_first(st.generated);
    const int64_t peak = proc_status_bytes("VmHWM");
    if (st.load_s >= 0)
      std::cerr << fmt::format("from the files: load {:.2f} s (RSS {:.2f} GiB after it) | first answer {:.2f} s\n",
                               st.load_s, st.rss_after_load / double(1 << 30), st.first_answer_s);
    if (st.references > 0)
      std::cerr << fmt::format("few-shot: {} reference image(s) encoded into the memory bank in {:.2f} s\n", st.references,
                               st.references_s);
    std::cerr << fmt::format("per image: encode {:.1f} ms | maps+adapters {:.1f} ms | prefill {} tokens {:.1f} ms | generate {:g} "
                             "tokens {:.1f} ms ({:.1f} ms/token) | total {:.1f} ms | peak RSS {:.2f} GiB\n",
                             enc * 1e3, maps * 1e3, st.prompt_tokens, pre * 1e3, generated, gen * 1e3,
                             generated > 0 ? gen * 1e3 / generated : 0.0,
                             (enc + maps + pre + gen) * 1e3, peak / double(1 << 30));
    // The per-part decision (METHOD: the first answer token follows the prefill).
    std::cerr << fmt::format("per-part decision (encode + maps + prefill): {:.2f} s\n", enc + maps + pre);
    if (o->json) {
      nlohmann::json j{{"arch", o->model.empty() ? o->arch : o->model}, {"dtype", o->dtype}, {"quant", o->quant},
                       {"vision_quant", o->vision_quant.empty() ? "none" : o->vision_quant},
                       {"threads", torch::get_num_threads()},
                       {"iters", o->iters}, {"tokens", o->tokens}, {"encode_ms", enc * 1e3}, {"maps_ms", maps * 1e3},
                       {"prefill_ms", pre * 1e3}, {"prompt_tokens", st.prompt_tokens}, {"generate_ms", gen * 1e3}, {"generated_tokens", generated},
                       {"decision_ms", (enc + maps + pre) * 1e3}, {"peak_rss_bytes", peak}};
      if (st.load_s >= 0) {
        j["load_ms"] = st.load_s * 1e3;
        j["rss_after_load_bytes"] = st.rss_after_load;
        j["first_answer_ms"] = st.first_answer_s * 1e3;
        j["references"] = st.references;
        if (st.references > 0) j["references_ms"] = st.references_s * 1e3;
      }
      std::cout << j.dump() << "\n";
    }
  });
}

}  // namespace iadgpt::cli
