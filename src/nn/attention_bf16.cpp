#include "nn/attention_bf16.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "io/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include "nn/simd_x86.h"
#define IADGPT_ATTENTION_X86 1
#endif

namespace iadgpt::nn {
namespace {
namespace fused {  // (named: the module is one unity translation unit)

// Query rows per pass: their fp32 scores (48 × L, 111 KB at L = 577) stay in L2 between the
// product, the softmax and the context.
constexpr int64_t kRowBlock = 48;
// The product's register tile: 6 rows × 4 vectors of 16 columns = 24 fp32 accumulators, plus the
// 4 vectors of the right operand and one broadcast pair: 29 of the 32 zmm registers.
constexpr int kTileRows = 6;
constexpr int kTileVectors = 4;

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// One (batch, head) pair's packed operands and scratch, reused for the pairs a thread runs.
// Pairs of bf16 are held as 32-bit words, the element of lower index in the low half, as
// `vdpbf16ps` multiplies them: sum += a.lo·b.lo + a.hi·b.hi in each fp32 lane.
struct HeadScratch {
  HeadScratch(int64_t length, int64_t head_dim)
      : key_columns(round_up(length, 16)),
        value_pairs((length + 1) / 2),
        keys(static_cast<size_t>(head_dim / 2 * key_columns)),
        values(static_cast<size_t>(value_pairs * head_dim)),
        scores(static_cast<size_t>(kRowBlock * key_columns)),
        probs(static_cast<size_t>(kRowBlock * 2 * value_pairs)),
        context(static_cast<size_t>(kRowBlock * head_dim)) {}
  int64_t key_columns;           // L rounded up to 16; the columns past L are zero keys
  int64_t value_pairs;           // ⌈L / 2⌉; an odd L's last pair holds a zero value row
  std::vector<uint32_t> keys;    // [head_dim / 2][key_columns]: (k[j][2p], k[j][2p+1]) at [p][j]
  std::vector<uint32_t> values;  // [value_pairs][head_dim]: (v[2p][d], v[2p+1][d]) at [p][d]
  std::vector<float> scores;     // [kRowBlock][key_columns]
  std::vector<uint16_t> probs;   // [kRowBlock][2 · value_pairs]: bf16 probabilities, an odd L's last 0
  std::vector<float> context;    // [kRowBlock][head_dim]
};

// Where one (batch, head) pair's operands lie in qkv [B, L, 3, H, hd] and the context [B, L, H, hd].
struct HeadView {
  const uint16_t* q;  // row i at q + i * qkv_row
  const uint16_t* k;
  const uint16_t* v;
  uint16_t* out;      // row i at out + i * out_row
  int64_t qkv_row, out_row, length, head_dim;
};

void pack_head(const HeadView& h, HeadScratch& s) {
  // keys: word p of key row j is the 32-bit pair (k[j][2p], k[j][2p+1]) as it lies in memory.
  // The columns past L are never written: zero since the scratch was made.
  for (int64_t j = 0; j < h.length; ++j) {
    const uint16_t* row = h.k + j * h.qkv_row;
    for (int64_t p = 0; p < h.head_dim / 2; ++p) {
      uint32_t word;
      std::memcpy(&word, row + 2 * p, sizeof word);
      s.keys[static_cast<size_t>(p * s.key_columns + j)] = word;
    }
  }
  // values: rows 2p and 2p + 1 interleaved, a missing last row as zeros.
  for (int64_t p = 0; p < s.value_pairs; ++p) {
    const uint16_t* even = h.v + 2 * p * h.qkv_row;
    const uint16_t* odd = 2 * p + 1 < h.length ? even + h.qkv_row : nullptr;
    for (int64_t d = 0; d < h.head_dim; ++d)
      s.values[static_cast<size_t>(p * h.head_dim + d)] = uint32_t{even[d]} | (odd ? uint32_t{odd[d]} << 16 : 0u);
  }
}

#ifdef IADGPT_ATTENTION_X86

// The two adjacent bf16 values at pair p of a row as one 32-bit word, read through memcpy (the
// row is bf16 data, not an array of words; the compiler makes it one broadcast load).
inline int32_t pair_word(const uint16_t* row, int64_t p) {
  int32_t word;
  std::memcpy(&word, row + 2 * p, sizeof word);
  return word;
}

// c[r][16v + l] = Σ_p a[r][p] · b[p][16v + l] for R rows and V vectors of 16 columns, where each
// a element is a pair of adjacent bf16 in a's rows (a_stride in bf16 values), each b element a
// packed pair (a 32-bit word; b_stride in words), and the sums are fp32.
template <int R, int V>
IADGPT_AVX512_BF16_TARGET void dot_tile(const uint16_t* a, int64_t a_stride, const uint32_t* b, int64_t b_stride,
                                        int64_t pairs, float* c, int64_t c_stride) {
  __m512 acc[R][V];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    __m512bh right[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) right[v] = (__m512bh)_mm512_loadu_si512(b + p * b_stride + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512bh left = (__m512bh)_mm512_set1_epi32(pair_word(a + r * a_stride, p));
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], left, right[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(c + r * c_stride + 16 * v, acc[r][v]);
}

using TileFn = void (*)(const uint16_t*, int64_t, const uint32_t*, int64_t, int64_t, float*, int64_t);

template <int R>
constexpr std::array<TileFn, kTileVectors> tiles_of_rows = {dot_tile<R, 1>, dot_tile<R, 2>, dot_tile<R, 3>, dot_tile<R, 4>};
constexpr std::array<std::array<TileFn, kTileVectors>, kTileRows> kTiles = {
    tiles_of_rows<1>, tiles_of_rows<2>, tiles_of_rows<3>, tiles_of_rows<4>, tiles_of_rows<5>, tiles_of_rows<6>};

// c [rows][cols] = a [rows][pairs] · b [pairs][cols], cols a multiple of 16, in register tiles.
void product(const uint16_t* a, int64_t a_stride, int64_t rows, const uint32_t* b, int64_t b_stride, int64_t pairs,
             int64_t cols, float* c, int64_t c_stride) {
  for (int64_t j0 = 0; j0 < cols; j0 += 16 * kTileVectors) {
    const int64_t vectors = std::min<int64_t>(kTileVectors, (cols - j0) / 16);
    for (int64_t i0 = 0; i0 < rows; i0 += kTileRows) {
      const int64_t tile_rows = std::min<int64_t>(kTileRows, rows - i0);
      kTiles[static_cast<size_t>(tile_rows - 1)][static_cast<size_t>(vectors - 1)](
          a + i0 * a_stride, a_stride, b + j0, b_stride, pairs, c + i0 * c_stride + j0, c_stride);
    }
  }
}

// One row of scores → bf16 probabilities: x = score · scale + mask, softmax in fp32 (the
// exponentials written back over the scores), rounded once; an odd L's pad column gets 0. x is
// formed again in the second pass rather than stored by the first: a multiply-add costs less
// than a store and a load.
IADGPT_AVX512_BF16_TARGET void softmax_row(float* scores, const float* mask_row, float scale, int64_t n,
                                           uint16_t* probs) {
  const __m512 factor = _mm512_set1_ps(scale);
  const auto logits = [=](int64_t c, __mmask16 m) IADGPT_AVX512_BF16_TARGET {
    const __m512 bias = mask_row ? _mm512_maskz_loadu_ps(m, mask_row + c) : _mm512_setzero_ps();
    return _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, scores + c), factor, bias);
  };
  simd::softmax_row(logits, n, scores, probs);
  if (n % 2) probs[n] = 0;
}

// Context rows fp32 → bf16 into the output's rows.
IADGPT_AVX512_BF16_TARGET void store_context(const float* context, int64_t rows, int64_t head_dim, uint16_t* out,
                                             int64_t out_row) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t d = 0; d < head_dim; d += 16)
      simd::store_bf16(out + i * out_row + d, _mm512_loadu_ps(context + i * head_dim + d), 0xFFFF);
}

void attend_head(const HeadView& h, const float* mask, HeadScratch& s) {
  pack_head(h, s);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(h.head_dim)));
  for (int64_t i0 = 0; i0 < h.length; i0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, h.length - i0);
    product(h.q + i0 * h.qkv_row, h.qkv_row, rows, s.keys.data(), s.key_columns, h.head_dim / 2, s.key_columns,
            s.scores.data(), s.key_columns);
    for (int64_t i = 0; i < rows; ++i)
      softmax_row(s.scores.data() + i * s.key_columns, mask ? mask + (i0 + i) * h.length : nullptr, scale, h.length,
                  s.probs.data() + i * 2 * s.value_pairs);
    product(s.probs.data(), 2 * s.value_pairs, rows, s.values.data(), h.head_dim, s.value_pairs, h.head_dim,
            s.context.data(), h.head_dim);
    store_context(s.context.data(), rows, h.head_dim, h.out + i0 * h.out_row, h.out_row);
  }
}

#endif  // IADGPT_ATTENTION_X86

}  // namespace fused
}  // namespace

bool attention_bf16_supported(int64_t head_dim, MatvecIsa isa) {
#ifdef IADGPT_ATTENTION_X86
  return isa == MatvecIsa::Avx512Bf16 && matvec_isa_supported(isa) && head_dim > 0 && head_dim % 16 == 0;
#else
  (void)head_dim;
  (void)isa;
  return false;
#endif
}

torch::Tensor attention_bf16(const torch::Tensor& qkv, const torch::Tensor& additive_mask, MatvecIsa isa) {
  if (qkv.scalar_type() != torch::kBFloat16 || !qkv.device().is_cpu() || qkv.dim() != 5 || qkv.size(2) != 3 ||
      !qkv.is_contiguous())
    throw InputError(fmt::format("attention_bf16: expected contiguous bf16 q/k/v [B, L, 3, heads, head_dim] on the CPU, got {} {} [{}]",
                                 c10::toString(qkv.scalar_type()), qkv.device().str(), fmt::join(qkv.sizes(), ", ")));
  const int64_t batch = qkv.size(0), length = qkv.size(1), heads = qkv.size(3), head_dim = qkv.size(4);
  if (!attention_bf16_supported(head_dim, isa))
    throw InputError(fmt::format("attention_bf16: the {} path does not run heads of width {} on this CPU",
                                 matvec_isa_name(isa), head_dim));
  torch::Tensor mask;
  if (additive_mask.defined()) {
    if (additive_mask.dim() != 2 || additive_mask.size(0) != length || additive_mask.size(1) != length ||
        !additive_mask.is_floating_point())
      throw InputError(fmt::format("attention_bf16: the mask must be floating [{0}, {0}], got {1} [{2}]", length,
                                   c10::toString(additive_mask.scalar_type()), fmt::join(additive_mask.sizes(), ", ")));
    mask = additive_mask.to(torch::kCPU, torch::kFloat32).contiguous();
  }
  auto context = torch::empty({batch, length, heads, head_dim}, qkv.options());
  if (context.numel() == 0) return context;
#ifdef IADGPT_ATTENTION_X86
  const auto* base = reinterpret_cast<const uint16_t*>(qkv.data_ptr<at::BFloat16>());
  auto* out = reinterpret_cast<uint16_t*>(context.data_ptr<at::BFloat16>());
  const float* mask_data = mask.defined() ? mask.data_ptr<float>() : nullptr;
  at::parallel_for(0, batch * heads, 1, [&](int64_t p0, int64_t p1) {
    fused::HeadScratch scratch(length, head_dim);
    for (int64_t pair = p0; pair < p1; ++pair) {
      const int64_t b = pair / heads, h = pair % heads;
      const uint16_t* q = base + (b * length * 3 * heads + h) * head_dim;  // [b, 0, 0, h, 0]
      const fused::HeadView view{q, q + heads * head_dim, q + 2 * heads * head_dim,
                                 out + (b * length * heads + h) * head_dim,
                                 3 * heads * head_dim, heads * head_dim, length, head_dim};
      fused::attend_head(view, mask_data, scratch);
    }
  });
#endif
  return context;
}

}  // namespace iadgpt::nn
