// `iadgpt convert --in CHECKPOINT --out FILE.safetensors [--dtype bf16|f32] [--keys vision|all]
// [--quant none|q8]`: rewrites a downloaded checkpoint as safetensors, which every command
// memory-maps (no parse, no copy, no conversion at load). Tensors are read one at a time and
// converted as read; with --keys all they are also written as they come
// (io::convert_to_safetensors). --quant q8 stores the vision tower's block matrices quantized
// (vision/loader.h kStoredVisionQuantKey), so that an int8 tower loads without quantizing.
#include <fmt/format.h>

#include <chrono>
#include <iostream>

#include "cli/commands.h"
#include "cli/progress.h"
#include "io/checkpoint.h"
#include "io/error.h"
#include "vision/loader.h"

namespace iadgpt::cli {

void add_convert(CLI::App& app) {
  struct Opts {
    std::string in, out, dtype = "bf16", keys = "vision", config, family, quant = "none";
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("convert", "Rewrite a checkpoint (.pth/.pt/.bin, HF directory) as safetensors");
  cmd->add_option("--in", o->in, "Checkpoint file or Hugging Face directory")->required();
  cmd->add_option("--out", o->out, "Output .safetensors file (written atomically)")->required();
  cmd->add_option("--dtype", o->dtype, "Floating tensors as bf16 or f32 (integer tensors are kept)")
      ->check(CLI::IsMember({"bf16", "f32", "fp32"}));
  cmd->add_option("--keys", o->keys,
                  "vision: only the vision tower's tensors (upstream names; ImageBind's stem stays fp32); all: every tensor "
                  "(an LLM)")
      ->check(CLI::IsMember({"vision", "all"}));
  cmd->add_option("--config", o->config, "JSON config for the vision tower (as for encode-image)");
  cmd->add_option("--family", o->family, "Override family detection: imagebind, openai, openclip, hf");
  cmd->add_option("--quant", o->quant,
                  "With --keys vision: none, or q8 to store the blocks' matrices as int8 quants of the --dtype weights "
                  "(what --vision-quant q8 loads, without quantizing at load); an LLM is quantized by `iadgpt quantize`")
      ->capture_default_str();
  cmd->callback([o] {
    const auto quant = vision::parse_vision_quant(o->quant, "--quant");
    if (quant != nn::QuantFormat::None && o->keys != "vision")
      throw InputError("--quant: only the vision tower (--keys vision) is quantized by convert; for an LLM use `iadgpt quantize`");
    const auto t0 = std::chrono::steady_clock::now();
    const auto dtype = o->dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
    io::ConvertStats stats;
    std::string stored_note;  // ", block matrices stored q8" for a tower written quantized
    if (o->keys == "vision") {  // the tower only (about 1.3 GB in bf16): read whole, then written
      vision::VisionOptions vo{.dtype = dtype, .quant = quant};
      if (!o->family.empty()) vo.family = vision::parse_family(o->family);
      if (!o->config.empty()) vo.config = vision::read_config_file(o->config);
      const auto ckpt = vision::read_vision_tensors(o->in, vo);
      const auto stored = vision::stored_vision_quant(ckpt);
      if (stored != nn::QuantFormat::None) stored_note = fmt::format(", block matrices stored {}", nn::quant_format_name(stored));
      for (const auto& [key, t] : ckpt.tensors)  // a stored matrix's parameters are its quants, not its scales
        if (!(stored != nn::QuantFormat::None && key.ends_with(nn::kQuantScaleSuffix))) stats.parameters += t.numel();
      stats.tensors = static_cast<int64_t>(ckpt.tensors.size());
      auto metadata = ckpt.metadata;  // the stored format, when quantized
      metadata["format"] = "pt";
      io::save_safetensors(o->out, ckpt.tensors, metadata);
    } else {  // every tensor (an LLM: 13.5 GB at 7B in bf16): streamed, 256 MiB at a time
      std::unique_ptr<Progress> bar;
      stats = io::convert_to_safetensors(o->in, o->out,
                                         {.float_dtype = dtype, .progress = [&](uint64_t done, uint64_t total) {
                                            if (!bar) bar = std::make_unique<Progress>("convert (MiB)", int64_t(total >> 20));
                                            bar->step(int64_t(done >> 20));
                                          }},
                                         {{"format", "pt"}});
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::cout << fmt::format("wrote {}: {} tensors, {} parameters, {}{} ({:.1f} s)\n", o->out, stats.tensors,
                             stats.parameters, o->dtype, stored_note, s);
  });
}

}  // namespace iadgpt::cli
