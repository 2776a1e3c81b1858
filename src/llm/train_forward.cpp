#include "llm/train_forward.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#ifdef IADGPT_WITH_CUDA
#include <ATen/cuda/CUDAGeneratorImpl.h>
#endif
#include <torch/csrc/autograd/custom_function.h>
#include <fmt/format.h>

#include <cmath>
#include <fstream>

#include "io/checkpoint.h"
#include "io/error.h"
#include "io/splitmix.h"
#include "llm/ops.h"
#include "nn/device.h"

namespace iadgpt::llm {
namespace {

// SplitMix64: decorrelates the per-(row, layer, projection) dropout seeds.
uint64_t mix(uint64_t x) { return io::splitmix64(x); }

struct DropoutContext {
  const TrainForwardOptions* options;
  double p;
};

// The generator of one row's dropout mask at one site. On CUDA a Philox generator on the device
// (a mask drawn on the host would cost a host RNG pass and a copy per site and row): the masks
// then differ from the CPU's, but a seed still gives the same mask every time (the checkpointed
// recompute relies on it). Elsewhere the CPU generator, and the mask is drawn on the host.
at::Generator row_generator(uint64_t seed, const torch::Device& device) {
#ifdef IADGPT_WITH_CUDA
  if (device.is_cuda()) {
    auto gen = at::cuda::detail::createCUDAGenerator(device.has_index() ? device.index() : -1);
    gen.set_current_seed(seed);
    return gen;
  }
#endif
  (void)device;
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

// y = x Wᵀ + scale · B A dropout(x). x: [B, T, in]. The dropout mask of row b is drawn from its
// own generator (seed mixed with the layer/projection id), so it is independent of the batch.
torch::Tensor project(const torch::Tensor& x, const torch::Tensor& w, const LoraPair& lora, const DropoutContext& dc,
                      uint64_t site) {
  auto y = torch::linear(x, w);
  if (!lora.defined()) return y;
  auto xin = x;
  if (dc.p > 0) {
    const int64_t B = x.size(0);
    std::vector<torch::Tensor> keep;
    keep.reserve(B);
    for (int64_t b = 0; b < B; ++b) {
      auto gen = row_generator(mix(dc.options->dropout_seeds[b] ^ mix(site)), x.device());
      keep.push_back(at::rand(x.sizes().slice(1), gen, x.options().device(gen.device()).requires_grad(false)).ge(dc.p));
    }
    xin = x * torch::stack(keep).to(x.device()).to(x.scalar_type()).div(1.0 - dc.p);
  }
  // fp32 pairs on a bf16 base: the pair computes in fp32 (autocast, when on, casts to bf16 anyway);
  // on an fp32 base both casts are no-ops.
  return y + torch::linear(torch::linear(xin.to(lora.a.scalar_type()), lora.a), lora.b).mul(lora.scale).to(y.scalar_type());
}

// Walks every weight with its HF name (fixed order, shared by make_trainable/named_weights).
template <class Model, class F>
void for_each_weight(Model& model, F&& f) {
  auto& w = model.weights;
  f("model.embed_tokens.weight", w.embed);
  for (size_t l = 0; l < w.layers.size(); ++l) {
    auto& L = w.layers[l];
    const auto p = fmt::format("model.layers.{}.", l);
    f(p + "input_layernorm.weight", L.attn_norm);
    f(p + "self_attn.q_proj.weight", L.wq);
    f(p + "self_attn.k_proj.weight", L.wk);
    f(p + "self_attn.v_proj.weight", L.wv);
    f(p + "self_attn.o_proj.weight", L.wo);
    f(p + "post_attention_layernorm.weight", L.ffn_norm);
    f(p + "mlp.gate_proj.weight", L.w_gate);
    f(p + "mlp.up_proj.weight", L.w_up);
    f(p + "mlp.down_proj.weight", L.w_down);
  }
  f("model.norm.weight", w.norm);
  if (!model.config.tie_word_embeddings) f("lm_head.weight", w.lm_head);
}

struct LoraSite {
  const char* name;
  LoraPair LayerWeights::*pair;
  torch::Tensor LayerWeights::*weight;
};
constexpr LoraSite kLoraSites[] = {
    {"q_proj", &LayerWeights::lora_q, &LayerWeights::wq},
    {"k_proj", &LayerWeights::lora_k, &LayerWeights::wk},
    {"v_proj", &LayerWeights::lora_v, &LayerWeights::wv},
    {"o_proj", &LayerWeights::lora_o, &LayerWeights::wo},
};

void require_fp32(const LlamaModel& model, const char* what) {
  if (model.dtype != torch::kFloat32)
    throw InputError(fmt::format("{}: training needs the LLM in f32 (loaded as {})", what,
                                 c10::toString(model.dtype)));
}

}  // namespace

TrainableLora add_trainable_lora(LlamaModel& model, const LoraSpec& spec, uint64_t seed) {
  // The base may be bf16 (frozen): `project` runs the fp32 pairs on its input and casts back.
  if (spec.rank <= 0) throw InputError(fmt::format("LoRA rank must be positive (got {})", spec.rank));
  if (spec.dropout < 0 || spec.dropout >= 1)
    throw InputError(fmt::format("LoRA dropout must be in [0, 1) (got {})", spec.dropout));
  TrainableLora out{spec, {}};
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const double scale = spec.alpha / static_cast<double>(spec.rank);
  for (auto& L : model.weights.layers) {
    for (const auto& site : kLoraSites) {
      const auto& w = L.*site.weight;
      // PEFT: kaiming_uniform_(A, a=√5) → U(±1/√in); B = 0 so the first step starts at the base model.
      const double bound = 1.0 / std::sqrt(static_cast<double>(w.size(1)));
      // Drawn on the host (the same pairs on every device), then leaves on the weight's device.
      auto a = (at::rand({spec.rank, w.size(1)}, gen, torch::kFloat32) * 2 - 1).mul_(bound).to(w.device()).requires_grad_();
      auto b = torch::zeros({w.size(0), spec.rank}, torch::dtype(torch::kFloat32).device(w.device())).requires_grad_();
      L.*site.pair = LoraPair{a, b, scale};
      out.parameters.push_back(a);
      out.parameters.push_back(b);
    }
  }
  return out;
}

NamedParameters make_trainable(LlamaModel& model) {
  require_fp32(model, "full fine-tuning");
  NamedParameters out;
  const bool tied = model.config.tie_word_embeddings;
  for_each_weight(model, [&](const std::string& name, torch::Tensor& t) {
    t = t.detach().to(torch::kFloat32).clone().requires_grad_();
    out.names.push_back(name);
    out.tensors.push_back(t);
  });
  if (tied) model.weights.lm_head = model.weights.embed;
  return out;
}

NamedParameters named_weights(const LlamaModel& model) {
  NamedParameters out;
  for_each_weight(model, [&](const std::string& name, const torch::Tensor& t) {
    out.names.push_back(name);
    out.tensors.push_back(t);
  });
  return out;
}

NamedParameters lora_weights(const LlamaModel& model) {
  NamedParameters out;
  for (size_t l = 0; l < model.weights.layers.size(); ++l)
    for (const auto& site : kLoraSites) {
      const auto& pair = model.weights.layers[l].*site.pair;
      if (!pair.defined()) continue;
      const auto p = fmt::format("base_model.model.model.layers.{}.self_attn.{}.", l, site.name);
      out.names.push_back(p + "lora_A.weight");
      out.tensors.push_back(pair.a);
      out.names.push_back(p + "lora_B.weight");
      out.tensors.push_back(pair.b);
    }
  return out;
}

void save_peft_adapter(const LlamaModel& model, const LoraSpec& spec, const std::filesystem::path& dir) {
  const auto named = lora_weights(model);
  if (named.names.empty()) throw std::runtime_error("save_peft_adapter: the model has no LoRA attached");
  std::filesystem::create_directories(dir);
  io::TensorMap tensors;
  for (size_t i = 0; i < named.names.size(); ++i)
    tensors.emplace(named.names[i], named.tensors[i].detach().to(torch::kFloat32).contiguous());
  io::save_safetensors(dir / "adapter_model.safetensors", tensors, {{"format", "pt"}});
  nlohmann::json cfg = {{"peft_type", "LORA"},         {"r", spec.rank},
                        {"lora_alpha", spec.alpha},    {"lora_dropout", spec.dropout},
                        {"target_modules", {"q_proj", "k_proj", "v_proj", "o_proj"}},
                        {"bias", "none"},              {"task_type", "CAUSAL_LM"},
                        {"use_rslora", false},         {"use_dora", false},
                        {"fan_in_fan_out", false},     {"inference_mode", true},
                        {"base_model_name_or_path", nullptr}};
  const auto tmp = dir / "adapter_config.json.tmp";
  {
    std::ofstream out(tmp);
    out << cfg.dump(2);
    if (!out) throw std::runtime_error(fmt::format("{}: write failed", tmp.string()));
  }
  std::filesystem::rename(tmp, dir / "adapter_config.json");
}

namespace {

// What every layer of one forward reads besides its input: the rotary tables and the attention
// bias of the batch, the dropout draws. Held by a checkpointed layer until its backward (the
// model itself must outlive the backward, as its weights do).
struct LayerCall : torch::CustomClassHolder {
  const LlamaModel* model = nullptr;
  torch::Tensor cos, sin, bias;
  TrainForwardOptions options;  // lora_dropout, dropout_seeds, layer_forwards
  // Autocast as the forward saw it: a recompute in backward must round as the forward did.
  bool autocast_cpu = false, autocast_cuda = false;
  at::ScalarType autocast_cpu_dtype = at::kBFloat16, autocast_cuda_dtype = at::kBFloat16;
};

// One decoder layer (pre-norm attention and SwiGLU MLP, both residual) on x [B, T, D] fp32.
torch::Tensor decoder_layer(const LayerCall& call, int64_t l, const torch::Tensor& x) {
  const auto& model = *call.model;
  const auto& c = model.config;
  const auto& L = model.weights.layers[l];
  if (call.options.layer_forwards) ++*call.options.layer_forwards;
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t H = c.num_heads, KV = c.num_kv_heads, hd = c.head_dim(), group = H / KV;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const DropoutContext dc{&call.options, call.options.lora_dropout};
  const uint64_t site = static_cast<uint64_t>(l) * 8;
  auto h = rms_norm(x, L.attn_norm, c.rms_norm_eps).to(model.dtype);
  auto q = project(h, L.wq, L.lora_q, dc, site + 0).view({B, T, H, hd}).transpose(1, 2).to(torch::kFloat32);
  auto k = project(h, L.wk, L.lora_k, dc, site + 1).view({B, T, KV, hd}).transpose(1, 2).to(torch::kFloat32);
  auto v = project(h, L.wv, L.lora_v, dc, site + 2).view({B, T, KV, hd}).transpose(1, 2).to(torch::kFloat32);
  q = apply_rope(q, call.cos, call.sin);
  k = apply_rope(k, call.cos, call.sin);
  // HF repeat_kv: query heads g*group .. g*group+group-1 share kv head g.
  auto qg = q.reshape({B, KV, group * T, hd});
  auto scores = torch::matmul(qg, k.transpose(-1, -2)).mul(scale).view({B, KV, group, T, T});
  scores = scores + call.bias.unsqueeze(1);
  auto probs = torch::softmax(scores, -1).view({B, KV, group * T, T});
  auto attn = torch::matmul(probs, v).view({B, H, T, hd}).transpose(1, 2).reshape({B, T, H * hd});
  auto y = x + project(attn.to(model.dtype), L.wo, L.lora_o, dc, site + 3).to(torch::kFloat32);

  h = rms_norm(y, L.ffn_norm, c.rms_norm_eps).to(model.dtype);
  auto gate = torch::silu(project(h, L.w_gate, L.lora_gate, dc, site + 4));
  auto up = project(h, L.w_up, L.lora_up, dc, site + 5);
  return y + project(gate * up, L.w_down, L.lora_down, dc, site + 6).to(torch::kFloat32);
}

// The tensors of layer l that train (LoRA pairs, or every weight in a full fine-tune): the
// checkpointed layer's inputs besides x, so that autograd routes their gradients through it.
std::vector<torch::Tensor> trained_tensors(const LayerWeights& L) {
  std::vector<torch::Tensor> out;
  auto add = [&](const torch::Tensor& t) {
    if (t.defined() && t.requires_grad()) out.push_back(t);
  };
  for (const auto* t : {&L.attn_norm, &L.wq, &L.wk, &L.wv, &L.wo, &L.ffn_norm, &L.w_gate, &L.w_up, &L.w_down}) add(*t);
  for (const auto* p : {&L.lora_q, &L.lora_k, &L.lora_v, &L.lora_o, &L.lora_gate, &L.lora_up, &L.lora_down}) {
    add(p->a);
    add(p->b);
  }
  return out;
}

// Puts autocast back as the forward had it, for the recompute; restores the caller's on exit.
class AutocastAs {
 public:
  explicit AutocastAs(const LayerCall& call)
      : cpu_(nn::autocast_enabled(c10::DeviceType::CPU)), cuda_(nn::autocast_enabled(c10::DeviceType::CUDA)),
        cpu_dtype_(nn::autocast_dtype(c10::DeviceType::CPU)), cuda_dtype_(nn::autocast_dtype(c10::DeviceType::CUDA)) {
    set(call.autocast_cpu, call.autocast_cpu_dtype, call.autocast_cuda, call.autocast_cuda_dtype);
  }
  ~AutocastAs() { set(cpu_, cpu_dtype_, cuda_, cuda_dtype_); }
  AutocastAs(const AutocastAs&) = delete;
  AutocastAs& operator=(const AutocastAs&) = delete;

 private:
  static void set(bool cpu, at::ScalarType cpu_dtype, bool cuda, at::ScalarType cuda_dtype) {
    nn::set_autocast(c10::DeviceType::CPU, cpu, cpu_dtype);
    nn::set_autocast(c10::DeviceType::CUDA, cuda, cuda_dtype);
  }
  bool cpu_, cuda_;
  at::ScalarType cpu_dtype_, cuda_dtype_;
};

// Gradient checkpointing of one decoder layer: the forward keeps only its input x (no
// activations); the backward runs the layer again with autograd on and differentiates that.
// Dropout masks come from per-row seeds, so the recompute draws the same ones.
class CheckpointedLayer : public torch::autograd::Function<CheckpointedLayer> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, at::TensorList trained,
                               const c10::intrusive_ptr<LayerCall>& call, int64_t l) {
    std::vector<torch::Tensor> saved{x};
    saved.insert(saved.end(), trained.begin(), trained.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["call"] = c10::IValue::make_capsule(call);
    ctx->saved_data["layer"] = l;
    // Grad mode is off here: nothing is kept. Nor may autocast cache its casts of the fp32 LoRA
    // pairs: made without grad, they would be handed to the recompute, whose graph would then
    // stop short of the pairs (their gradients lost; tested).
    const bool cache = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_cache_enabled(false);
    torch::Tensor y;
    try {
      y = decoder_layer(*call, l, x);
    } catch (...) {
      at::autocast::set_autocast_cache_enabled(cache);
      throw;
    }
    at::autocast::set_autocast_cache_enabled(cache);
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const auto call = c10::static_intrusive_pointer_cast<LayerCall>(ctx->saved_data["call"].toCapsule());
    const int64_t l = ctx->saved_data["layer"].toInt();
    auto x = saved[0].detach().requires_grad_(x_needs_grad(ctx));
    std::vector<torch::Tensor> inputs;
    if (x.requires_grad()) inputs.push_back(x);
    for (size_t i = 1; i < saved.size(); ++i) inputs.push_back(saved[i]);
    torch::Tensor y;
    {
      torch::AutoGradMode on(true);
      AutocastAs autocast(*call);
      y = decoder_layer(*call, l, x);
    }
    auto grads = inputs.empty() ? torch::autograd::variable_list{}
                                : torch::autograd::grad({y}, inputs, {grad_out[0]}, /*retain_graph=*/false,
                                                        /*create_graph=*/false, /*allow_unused=*/true);
    // One gradient per forward input: x, each trained tensor, then none for `call` and `l`.
    torch::autograd::variable_list out;
    size_t g = 0;
    out.push_back(x.requires_grad() ? grads[g++] : torch::Tensor());
    for (size_t i = 1; i < saved.size(); ++i) out.push_back(grads[g++]);
    out.push_back(torch::Tensor());
    out.push_back(torch::Tensor());
    return out;
  }

 private:
  static bool x_needs_grad(torch::autograd::AutogradContext* ctx) { return ctx->needs_input_grad(0); }
};

}  // namespace

torch::Tensor forward_train(const LlamaModel& model, const torch::Tensor& input, const torch::Tensor& attention_mask,
                            const TrainForwardOptions& options) {
  const auto& c = model.config;
  const auto& W = model.weights;
  if (input.dim() != 3 || input.size(2) != c.hidden_size)
    throw InputError(fmt::format("forward_train: input has shape [{}], expected [B, T, {}]",
                                 fmt::join(input.sizes(), ", "), c.hidden_size));
  const int64_t B = input.size(0), T = input.size(1);
  const int64_t hd = c.head_dim();
  if (T > model.max_positions())
    throw InputError(fmt::format("forward_train: {} positions, the model has {}", T, model.max_positions()));
  if (options.lora_dropout > 0 && static_cast<int64_t>(options.dropout_seeds.size()) != B)
    throw std::invalid_argument("forward_train: one dropout seed per batch row is needed");

  const auto device = input.device();
  auto mask = attention_mask.defined() ? attention_mask.to(device, torch::kBool)
                                       : torch::ones({B, T}, torch::dtype(torch::kBool).device(device));
  // Position of a token = number of real tokens before it in its row (padding does not count).
  auto positions = (mask.to(torch::kInt64).cumsum(1) - 1).clamp_min(0);
  auto call = c10::make_intrusive<LayerCall>();
  call->model = &model;
  call->options = options;
  call->cos = model.rope_cos.index_select(0, positions.flatten()).view({B, 1, T, hd / 2});
  call->sin = model.rope_sin.index_select(0, positions.flatten()).view({B, 1, T, hd / 2});
  // Query t sees key s iff s ≤ t and s is a real token; every query sees itself so padded rows
  // never softmax over nothing (their outputs are ignored by the loss).
  const auto bools = torch::dtype(torch::kBool).device(device);
  auto causal = torch::ones({T, T}, bools).tril();
  auto allowed = causal.unsqueeze(0).logical_and(mask.unsqueeze(1)).logical_or(torch::eye(T, bools).unsqueeze(0));
  call->bias = torch::zeros({B, 1, T, T}, torch::dtype(torch::kFloat32).device(device))
                   .masked_fill(allowed.logical_not().unsqueeze(1), -INFINITY);
  call->autocast_cpu = nn::autocast_enabled(c10::DeviceType::CPU);
  call->autocast_cpu_dtype = nn::autocast_dtype(c10::DeviceType::CPU);
  call->autocast_cuda = nn::autocast_enabled(c10::DeviceType::CUDA);
  call->autocast_cuda_dtype = nn::autocast_dtype(c10::DeviceType::CUDA);

  torch::Tensor x = input.to(torch::kFloat32);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    // Checkpointing only pays when something upstream needs a gradient; otherwise autograd keeps
    // nothing anyway.
    if (options.checkpoint_layers && torch::GradMode::is_enabled()) {
      auto trained = trained_tensors(W.layers[l]);
      if (x.requires_grad() || !trained.empty()) {
        x = CheckpointedLayer::apply(x, at::TensorList(trained), call, l);
        continue;
      }
    }
    x = decoder_layer(*call, l, x);
  }
  x = rms_norm(x, W.norm, c.rms_norm_eps).to(model.dtype);
  return torch::linear(x, W.lm_head).to(torch::kFloat32);
}

torch::Tensor answer_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels) {
  if (logits.dim() != 3 || labels.dim() != 2 || logits.size(0) != labels.size(0) || logits.size(1) != labels.size(1))
    throw std::invalid_argument(fmt::format("answer_cross_entropy: logits [{}] and labels [{}] disagree",
                                            fmt::join(logits.sizes(), ", "), fmt::join(labels.sizes(), ", ")));
  const int64_t B = logits.size(0), T = logits.size(1), V = logits.size(2);
  auto pred = logits.narrow(1, 0, T - 1).reshape({-1, V});
  auto target = labels.narrow(1, 1, T - 1).reshape({-1});
  auto per_token = torch::nn::functional::cross_entropy(
      pred, target, torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex).reduction(torch::kNone));
  auto valid = target.ne(kIgnoreIndex).view({B, T - 1}).to(torch::kFloat32);
  auto count = valid.sum(1);
  return per_token.view({B, T - 1}).mul(valid).sum(1) / count.clamp_min(1);
}

}  // namespace iadgpt::llm
