// The q8 / q4 matrix product of a multi-token forward (quant.h gemm_quant): Y = X Wᵀ with each
// activation row quantized per block of 32 as the decode kernels quantize their one input row
// (quantize_input); for q8 in two passes (split_input): then the rounding error that leaves too.
//
// AVX-512 VNNI path, the one that matters for speed: a prefill is compute bound, so weights and
// activations are laid out for `vpdpbusd` to run back to back.
// - Activations, packed once per call: inputs in groups of 16, one int32 lane each; for block b and
//   step k (elements 32b+4k .. 32b+4k+3) the 16 inputs' four int8 values fill one 64-byte line.
//   q8's residual passes are more inputs after the main ones.
// - Weights, a tile of rows at a time into a per-thread buffer that stays in cache (rows wider than
//   64 blocks in chunks of 8 blocks, the running sums kept between chunks): unsigned bytes,
//   q + 128 (q8, the sign bit flipped) or q + 8 (q4 nibbles unpacked to one per byte), as vpdpbusd
//   wants; the scales widened to fp32.
// - Micro-kernel: 4 rows × 32 inputs. Per step, 4 bytes of a row are broadcast to all lanes and
//   multiplied into two lines of activations: 8 vpdpbusd (512 multiply-adds) per 2 loads and 4
//   broadcasts. Each block's int32 sums start at −offset · Σ q_x (the weights' unsigned offset
//   taken back, exactly), then are scaled by s_w · s_x in fp32 and added.
// - Output: the micro-kernel's 4 rows × 16 inputs are transposed in registers and written as one
//   128-bit store per input into row-major Y (store_group); a scalar loop over the 64 values cost
//   about 10 % of an int8 ImageBind-Huge forward.
// - Inputs past the last whole group of 16, when a few (tail_by_kernels), go through the decode
//   kernels instead of a group padded with zeros.
// Other paths (AVX2, scalar), and that tail: matvec_quant_multi over the quantized rows, the same
// products with the decode kernels' summation order.
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "io/error.h"
#include "nn/quant.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define IADGPT_QGEMM_X86 1
#endif

namespace iadgpt::nn {
namespace {
namespace qgemm {  // (named: the module is one unity translation unit)

constexpr int64_t kLanes = 16;      // inputs per group: one int32 lane each
constexpr int64_t kSteps = 8;       // 4-element steps per block of 32
constexpr int64_t kQuadRows = 4;    // rows per micro-kernel call
// Weight tiles and the passes over them (tile_product). Where an input pair's whole row is small
// (2 groups × nb blocks × 512 B, at most 64 KB: widths up to 2048), a tile of about 64 KB of
// weights passes once against each pair, the pair staying in L1/L2 while every row of the tile
// passes. Wider rows (LLaMA-7B's down projection, 11008 wide; the vision MLP's second matrix,
// 5120) would stream the pair from L2 or beyond for every 4 rows, so the tile (64 rows) is taken
// 8 blocks at a time: a chunk of the tile (16 KB) and of a pair (8 KB) stay in L1. Measured on the
// Intel VM (min of 15 calls): 4096 × 11008 at 82 inputs, two passes, 29–40 → 21–22 ms; 1280 × 5120
// at 257 inputs the same within the VM's noise; 5120 × 1280 at 257 inputs was 10–15 % slower
// chunked, hence the two regimes.
constexpr int64_t kTileBytes = 64 << 10;
constexpr int64_t kWholeRowBlocks = 64;
constexpr int64_t kChunkedTileRows = 64;
constexpr int64_t kChunkBlocks = 8;

int64_t chunk_blocks(int64_t nb) { return nb <= kWholeRowBlocks ? nb : kChunkBlocks; }
int64_t tile_rows(int64_t cols) {
  if (cols / kQuantBlock > kWholeRowBlocks) return kChunkedTileRows;
  return std::clamp<int64_t>(kTileBytes / cols / kQuadRows * kQuadRows, kQuadRows, kChunkedTileRows);
}

// Activations in the micro-kernel's layout (see the top of the file); groups padded with zeros.
struct PackedInputs {
  int8_t* q;       // [groups][nb][kSteps][kLanes][4]
  float* scale;    // [groups][nb][kLanes]
  int32_t* start;  // [groups][nb][kLanes]: −offset · Σ q_x of the block
  int64_t groups, nb;
};

// One thread's tile of weight rows, unsigned, their scales in fp32, and the running sums of its
// products (tile_product).
struct WeightTile {
  uint8_t* q;      // [rows][cols]
  float* scale;    // [rows][nb]
  float* sums;     // tile_sums(rows, groups)
};

int32_t unsigned_offset(QuantFormat format) { return format == QuantFormat::Q8 ? 128 : 8; }

// Activation passes (split_input): two for q8, whose weights' own error (≤ s_w/2, 1/254 of a
// block's max) is as large as one int8 pass's activation error, so the second pass halves the
// product's error; one for q4, whose weight error (1/16 of the max) is 16 times a pass's and
// leaves the second pass nothing to gain but twice the work.
// InputPasses::One overrides it.
int64_t activation_passes(QuantFormat format, InputPasses passes) {
  return format == QuantFormat::Q8 && passes == InputPasses::ForFormat ? 2 : 1;
}

// x (one input row) as main + residual, both quantized per block of 32 (quantize_input): main
// quantizes x, residual the rounding error x − s·q that main leaves (at most s/2 per element, so
// its own scale is ≤ s/254). The product of both differs from W x by ≤ s/508 per element instead
// of s/2: the prefill's activations are then about as exact as bf16 ones (2^-9 relative), which
// keeps the Yes/No decision where the bf16 model puts it (tests/train/quant_decision_test.cpp).
// `tmp`: cols floats.
void split_input(const float* x, const QuantizedInput& main, const QuantizedInput& residual, float* tmp) {
  quantize_input(x, main);
  for (int64_t c = 0; c < main.cols; ++c) tmp[c] = x[c] - main.scale[c / kQuantBlock] * static_cast<float>(main.q[c]);
  quantize_input(tmp, residual);
}

// One quantized input row into lane `slot` of the packed layout.
void pack_row(const QuantizedInput& row, int64_t slot, int32_t offset, const PackedInputs& out) {
  const int64_t nb = out.nb, g = slot / kLanes, lane = slot % kLanes;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t gb = g * nb + b;
    for (int64_t k = 0; k < kSteps; ++k)
      std::memcpy(out.q + ((gb * kSteps + k) * kLanes + lane) * 4, row.q + b * kQuantBlock + k * 4, 4);
    out.scale[gb * kLanes + lane] = row.scale[b];
    // row.offset is 8 · Σ q_x (quant.h), exact in fp32 (|Σ q_x| ≤ 32 · 127).
    out.start[gb * kLanes + lane] = -offset * static_cast<int32_t>(row.offset[b] / 8.0f);
  }
}

#ifdef IADGPT_QGEMM_X86

// maskz_ forms with full masks where GCC 12 warns about the plain ones (quant_matvec.cpp).
#define IADGPT_QGEMM_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

// Rows [r0, r0 + n) of w into the tile; rows past the matrix's end (up to `padded`) are zeros.
// Vector code: at 64 inputs each weight byte feeds 64 multiply-adds, one vpdpbusd lane-step, so
// a scalar unpack (one or two cycles a byte) would cost as much as the product itself.
IADGPT_QGEMM_TARGET void unpack_tile(const QuantMatrix& w, int64_t r0, int64_t n, int64_t padded,
                                     const WeightTile& tile) {
  const int64_t cols = w.cols(), nb = cols / kQuantBlock, row_bytes = w.q.size(1);
  const auto* src = static_cast<const uint8_t*>(w.q.data_ptr());
  const auto* scale = reinterpret_cast<const uint16_t*>(w.scale.data_ptr<c10::Half>());
  const __m128i nibble = _mm_set1_epi8(0x0F);
  const __m512i sign = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* q = src + (r0 + r) * row_bytes;
    uint8_t* out = tile.q + r * cols;
    if (w.format == QuantFormat::Q8) {
      for (int64_t c = 0; c < cols; c += 64) {
        const auto mask = c + 64 <= cols ? ~__mmask64{0} : (__mmask64{1} << (cols - c)) - 1;
        _mm512_mask_storeu_epi8(out + c, mask, _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, q + c), sign));
      }
    } else {
      for (int64_t b = 0; b < nb; ++b) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + b * 16));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + b * kQuantBlock), _mm_and_si128(v, nibble));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + b * kQuantBlock + 16),
                         _mm_and_si128(_mm_srli_epi16(v, 4), nibble));
      }
    }
    const uint16_t* s = scale + (r0 + r) * nb;
    for (int64_t b = 0; b < nb; b += 16) {
      const auto mask = static_cast<__mmask16>(b + 16 <= nb ? 0xFFFF : (1u << (nb - b)) - 1);
      _mm512_mask_storeu_ps(tile.scale + r * nb + b, mask, _mm512_maskz_cvtph_ps(mask, _mm256_maskz_loadu_epi16(mask, s + b)));
    }
  }
  std::memset(tile.q + n * cols, 0, static_cast<size_t>((padded - n) * cols));
  std::fill(tile.scale + n * nb, tile.scale + padded * nb, 0.0f);
}

// sums[r][j·16 + lane] += Σ_b s_w[r,b] · s_x · (Σ u_w · q_x − offset · Σ q_x) over blocks b0 .. b1−1,
// for the 4 tile rows starting at `w` and the NT groups starting at group g; `first`: the sums
// start at zero. The running sums go through memory between chunks of blocks, so the additions
// happen in block order whatever the chunking.
template <int NT>
IADGPT_QGEMM_TARGET void micro_kernel(const uint8_t* w, const float* w_scale, int64_t cols, const PackedInputs& x,
                                      int64_t g, int64_t b0, int64_t b1, bool first, float* sums) {
  const int64_t nb = x.nb;
  __m512 sum[kQuadRows][NT];
  for (int64_t r = 0; r < kQuadRows; ++r)
    for (int j = 0; j < NT; ++j) sum[r][j] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(sums + (r * NT + j) * kLanes);
  for (int64_t b = b0; b < b1; ++b) {
    __m512i acc[kQuadRows][NT];
    for (int j = 0; j < NT; ++j) {
      const __m512i start = _mm512_loadu_si512(x.start + ((g + j) * nb + b) * kLanes);
      for (auto& row : acc) row[j] = start;
    }
#pragma GCC unroll 8
    for (int64_t k = 0; k < kSteps; ++k) {
      __m512i xv[NT];
      for (int j = 0; j < NT; ++j) xv[j] = _mm512_loadu_si512(x.q + (((g + j) * nb + b) * kSteps + k) * kLanes * 4);
      for (int64_t r = 0; r < kQuadRows; ++r) {
        int32_t four;
        std::memcpy(&four, w + r * cols + b * kQuantBlock + k * 4, 4);
        const __m512i wv = _mm512_set1_epi32(four);
        for (int j = 0; j < NT; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], wv, xv[j]);
      }
    }
    for (int j = 0; j < NT; ++j) {
      const __m512 xs = _mm512_loadu_ps(x.scale + ((g + j) * nb + b) * kLanes);
      for (int64_t r = 0; r < kQuadRows; ++r) {
        const __m512 d = _mm512_mul_ps(xs, _mm512_set1_ps(w_scale[r * nb + b]));
        sum[r][j] = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xFFFF, acc[r][j]), d, sum[r][j]);
      }
    }
  }
  for (int64_t r = 0; r < kQuadRows; ++r)
    for (int j = 0; j < NT; ++j) _mm512_storeu_ps(sums + (r * NT + j) * kLanes, sum[r][j]);
}

// 64-bit pairs of a and b interleaved, low or high (the second step of a 4 × 4 transpose).
IADGPT_QGEMM_TARGET __m512 pairs_lo(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(0xFF, _mm512_castps_pd(a), _mm512_castps_pd(b)));
}
IADGPT_QGEMM_TARGET __m512 pairs_hi(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(0xFF, _mm512_castps_pd(a), _mm512_castps_pd(b)));
}

// The micro-kernel's sums for one group (4 rows × 16 inputs, row-major in `out` with a row stride
// of `stride` floats) into row-major Y (`rows` floats per input) from `y` on: each input's 4
// values are one 128-bit store (a 4 × 4 transpose within each 128-bit lane); rows past
// `valid_rows` (the matrix's end) and inputs past `valid_inputs` are left out. `add`: Y += instead
// of Y = (a residual pass, split_input).
IADGPT_QGEMM_TARGET void store_group(const float* out, int64_t stride, int64_t valid_inputs, int64_t valid_rows,
                                     bool add, float* y, int64_t rows) {
  const __m512 v0 = _mm512_loadu_ps(out), v1 = _mm512_loadu_ps(out + stride);
  const __m512 v2 = _mm512_loadu_ps(out + 2 * stride), v3 = _mm512_loadu_ps(out + 3 * stride);
  constexpr __mmask16 kAll16 = 0xFFFF;
  const __m512 lo01 = _mm512_maskz_unpacklo_ps(kAll16, v0, v1), hi01 = _mm512_maskz_unpackhi_ps(kAll16, v0, v1);
  const __m512 lo23 = _mm512_maskz_unpacklo_ps(kAll16, v2, v3), hi23 = _mm512_maskz_unpackhi_ps(kAll16, v2, v3);
  // by_input[m], 128-bit lane c: the 4 rows of input 4c + m.
  const __m512 by_input[4] = {pairs_lo(lo01, lo23), pairs_hi(lo01, lo23), pairs_lo(hi01, hi23), pairs_hi(hi01, hi23)};
  const auto row_mask = static_cast<__mmask8>((1u << valid_rows) - 1);
  for (int64_t lane = 0; lane < valid_inputs; ++lane) {
    const __m512 v = by_input[lane % 4];
    __m128 four;
    switch (lane / 4) {  // the extract's lane index must be a constant
      case 0: four = _mm512_maskz_extractf32x4_ps(0xF, v, 0); break;  // (the plain cast warns in GCC 12)
      case 1: four = _mm512_maskz_extractf32x4_ps(0xF, v, 1); break;
      case 2: four = _mm512_maskz_extractf32x4_ps(0xF, v, 2); break;
      default: four = _mm512_maskz_extractf32x4_ps(0xF, v, 3); break;
    }
    float* dst = y + lane * rows;
    if (valid_rows == kQuadRows) {  // plain moves where all 4 rows exist (masked ones cost more on some CPUs)
      if (add) four = _mm_add_ps(_mm_loadu_ps(dst), four);
      _mm_storeu_ps(dst, four);
      continue;
    }
    if (add) four = _mm_add_ps(_mm_maskz_loadu_ps(row_mask, dst), four);
    _mm_mask_storeu_ps(dst, row_mask, four);
  }
}

// Floats of the running sums of one tile (tile_product's `sums`): 4 rows × 32 inputs per quad of
// rows and pair of input groups.
int64_t tile_sums(int64_t t_rows, int64_t groups) { return t_rows / kQuadRows * ((groups + 1) / 2) * kQuadRows * 2 * kLanes; }

// Y [n, rows] for one tile of rows (r0 .. r0 + n_rows) against every input group, a chunk of
// chunk_blocks blocks at a time (the sums of each quad of rows and pair of groups kept in
// tile.sums). Slots 0 .. half−1 hold the inputs' main parts, half .. half+n−1 their
// residuals (split_input), whose products are added to the main ones (a group of residuals always
// comes after its mains).
void tile_product(const WeightTile& tile, int64_t cols, const PackedInputs& x, int64_t n, int64_t half, int64_t rows,
                  int64_t r0, int64_t n_rows, float* y) {
  const int64_t nb = x.nb, pairs = (x.groups + 1) / 2, quads = (n_rows + kQuadRows - 1) / kQuadRows;
  constexpr int64_t kPairFloats = kQuadRows * 2 * kLanes;
  const int64_t chunk = chunk_blocks(nb);
  for (int64_t b0 = 0; b0 < nb; b0 += chunk) {
    const int64_t b1 = std::min(nb, b0 + chunk);
    for (int64_t p = 0; p < pairs; ++p) {
      const int64_t g = 2 * p;
      for (int64_t quad = 0; quad < quads; ++quad) {
        const int64_t r = quad * kQuadRows;
        float* s = tile.sums + (quad * pairs + p) * kPairFloats;
        if (g + 1 < x.groups) micro_kernel<2>(tile.q + r * cols, tile.scale + r * nb, cols, x, g, b0, b1, b0 == 0, s);
        else micro_kernel<1>(tile.q + r * cols, tile.scale + r * nb, cols, x, g, b0, b1, b0 == 0, s);
      }
    }
  }
  // Into row-major Y (n × rows): 32 stores of 4 values against 4096+ vpdpbusd at real sizes.
  for (int64_t p = 0; p < pairs; ++p) {
    const int nt = 2 * p + 1 < x.groups ? 2 : 1;
    for (int64_t quad = 0; quad < quads; ++quad) {
      const int64_t r = quad * kQuadRows;
      const float* s = tile.sums + (quad * pairs + p) * kPairFloats;
      for (int j = 0; j < nt; ++j) {
        const int64_t slot = (2 * p + j) * kLanes;
        const bool residual = slot >= half;
        const int64_t t0 = residual ? slot - half : slot, valid = std::min(kLanes, n - t0);
        if (valid <= 0) continue;
        store_group(s + j * kLanes, nt * kLanes, valid, std::min(kQuadRows, n_rows - r), residual,
                    y + t0 * rows + r0 + r, rows);
      }
    }
  }
}

#endif  // IADGPT_QGEMM_X86

// Cuts 64-byte-aligned regions from one buffer; with a null base it only adds up the size.
struct Carver {
  uint8_t* base;
  int64_t used = 0;
  template <typename T>
  T* take(int64_t count) {
    T* p = base ? reinterpret_cast<T*>(base + used) : nullptr;
    used += (count * static_cast<int64_t>(sizeof(T)) + 63) / 64 * 64;
    return p;
  }
  QuantizedInput input(int64_t cols) {
    auto* q = take<int8_t>(cols);
    auto* scale = take<float>(cols / kQuantBlock);
    return {q, scale, take<float>(cols / kQuantBlock), cols};
  }
};

// The AVX2 / scalar paths: every row (and for q8 its residual) through matvec_quant_multi, the
// residuals' products into `residual_y` [n, rows], then added.
void gemm_by_rows(const QuantMatrix& w, const float* x, int64_t n, float* y, MatvecIsa isa, InputPasses input_passes,
                  Carver& mem) {
  const int64_t rows = w.rows(), cols = w.cols(), passes = activation_passes(w.format, input_passes);
  std::vector<QuantizedInput> xs(static_cast<size_t>(passes * n));
  std::vector<float*> ys(static_cast<size_t>(passes * n));
  float* tmp = mem.take<float>(cols);
  float* residual_y = passes == 2 ? mem.take<float>(n * rows) : nullptr;
  for (int64_t t = 0; t < n; ++t) {
    xs[t] = mem.input(cols), ys[t] = y + t * rows;
    if (passes == 2) xs[n + t] = mem.input(cols), ys[n + t] = residual_y + t * rows;
    if (!mem.base) continue;
    if (passes == 2) split_input(x + t * cols, xs[t], xs[n + t], tmp);
    else quantize_input(x + t * cols, xs[t]);
  }
  if (!mem.base) return;
  matvec_quant_multi(w, xs, ys, isa);
  if (passes == 2)
    for (int64_t i = 0; i < n * rows; ++i) y[i] += residual_y[i];
}

// The AVX-512 VNNI path (see the top of the file).
void gemm_vnni(const QuantMatrix& w, const float* x, int64_t n, float* y, InputPasses input_passes, Carver& mem) {
#ifdef IADGPT_QGEMM_X86
  const int64_t rows = w.rows(), cols = w.cols(), nb = cols / kQuantBlock;
  const int64_t passes = activation_passes(w.format, input_passes);
  const int64_t half = (n + kLanes - 1) / kLanes * kLanes, groups = passes * half / kLanes;
  const PackedInputs packed{mem.take<int8_t>(groups * nb * kQuantBlock * kLanes), mem.take<float>(groups * nb * kLanes),
                            mem.take<int32_t>(groups * nb * kLanes), groups, nb};
  const int64_t t_rows = tile_rows(cols);
  // Called inside a parallel region, parallel_for runs inline on the caller: one tile buffer.
  const bool nested = at::in_parallel_region();
  const int64_t threads = nested ? 1 : at::get_num_threads();
  std::vector<WeightTile> tiles;
  struct RowBuffers {
    QuantizedInput main, residual;
    float* tmp;
  };
  std::vector<RowBuffers> row_buffers;
  for (int64_t i = 0; i < threads; ++i) {
    auto* q = mem.take<uint8_t>(t_rows * cols);
    tiles.push_back({q, mem.take<float>(t_rows * nb), mem.take<float>(tile_sums(t_rows, groups))});
    const auto main = mem.input(cols), residual = mem.input(cols);
    row_buffers.push_back({main, residual, mem.take<float>(cols)});
  }
  if (!mem.base) return;

  std::memset(packed.q, 0, static_cast<size_t>(groups * nb * kQuantBlock * kLanes));
  std::fill(packed.scale, packed.scale + groups * nb * kLanes, 0.0f);
  std::fill(packed.start, packed.start + groups * nb * kLanes, 0);
  const int32_t offset = unsigned_offset(w.format);
  // Rows split over threads too: each writes its own lanes.
  at::parallel_for(0, n, 4, [&](int64_t t0, int64_t t1) {
    const RowBuffers& buf = row_buffers[nested ? 0 : at::get_thread_num()];
    for (int64_t t = t0; t < t1; ++t) {
      if (passes == 1) {
        quantize_input(x + t * cols, buf.main);
        pack_row(buf.main, t, offset, packed);
        continue;
      }
      split_input(x + t * cols, buf.main, buf.residual, buf.tmp);
      pack_row(buf.main, t, offset, packed);
      pack_row(buf.residual, half + t, offset, packed);
    }
  });
  const int64_t n_tiles = (rows + t_rows - 1) / t_rows;
  at::parallel_for(0, n_tiles, 1, [&](int64_t i0, int64_t i1) {
    const WeightTile& tile = tiles[nested ? 0 : at::get_thread_num()];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r0 = i * t_rows, n_rows = std::min(t_rows, rows - r0);
      const int64_t padded = (n_rows + kQuadRows - 1) / kQuadRows * kQuadRows;
      unpack_tile(w, r0, n_rows, padded, tile);
      tile_product(tile, cols, packed, n, half, rows, r0, n_rows, y);
    }
  });
#else
  (void)w, (void)x, (void)n, (void)y, (void)input_passes, (void)mem;
  throw InputError("gemm_quant: the avx512bf16 path needs an x86-64 build");
#endif
}

// Inputs past the last whole group of 16 that the AVX-512 path gives to the decode kernels
// (gemm_by_rows) instead of a group padded with zeros: 0, or n % 16 where those inputs' activation
// rows (inputs × passes) are at most kTailRowsByKernels. A padded group costs what 16 inputs cost;
// the decode kernels stream the matrix once per call and then pay per row. Measured on the Zen 4
// VM (2 threads, 4096 × 4096 q4, ms): 80 inputs 4.6; 80 + 1, 2, 4 by the decode kernels 0.21,
// 0.52, 0.82 more; a padded 81st to 96th input 0.7–0.9 more. Per matrix, over two sittings: q4
// at LLaMA-7B's 82 prompt tokens 3–7 % faster (its q8 keeps the padded group: 2 inputs × 2
// passes); q8 (one pass) at a ViT's 257 tokens 0–12 %.
int64_t tail_by_kernels(int64_t n, QuantFormat format, InputPasses passes) {
  constexpr int64_t kTailRowsByKernels = 3;
  const int64_t tail = n % kLanes;
  return tail * activation_passes(format, passes) <= kTailRowsByKernels ? tail : 0;
}

}  // namespace qgemm
}  // namespace

void gemm_quant(const QuantMatrix& w, const float* x, int64_t n, float* y, MatvecIsa isa, torch::Tensor& scratch,
                InputPasses passes) {
  if (n <= 0) return;
  const int64_t tail = isa == MatvecIsa::Avx512Bf16 ? qgemm::tail_by_kernels(n, w.format, passes) : n;
  const int64_t head = n - tail;
  // Twice: once to size the scratch, once to run.
  for (const bool run : {false, true}) {
    qgemm::Carver mem{run ? scratch.data_ptr<uint8_t>() : nullptr};
    if (head > 0) qgemm::gemm_vnni(w, x, head, y, passes, mem);
    if (tail > 0) qgemm::gemm_by_rows(w, x + head * w.cols(), tail, y + head * w.rows(), isa, passes, mem);
    if (!run && (!scratch.defined() || scratch.numel() < mem.used)) scratch = torch::empty({mem.used}, torch::kUInt8);
  }
}

void gemm_quant(const QuantMatrix& w, const torch::Tensor& x, torch::Tensor& y, MatvecIsa isa, InputPasses passes) {
  if (!w.defined()) throw InputError("gemm_quant: the matrix is not quantized");
  if (x.scalar_type() != torch::kFloat32 || y.scalar_type() != torch::kFloat32)
    throw InputError(fmt::format("gemm_quant: expected fp32 x and y, got {} and {}", c10::toString(x.scalar_type()),
                                 c10::toString(y.scalar_type())));
  if (x.dim() != 2 || x.size(1) != w.cols() || y.dim() != 2 || y.size(0) != x.size(0) || y.size(1) != w.rows() ||
      !x.is_contiguous() || !y.is_contiguous())
    throw InputError(fmt::format("gemm_quant: shapes do not fit: w [{}, {}], x [{}], y [{}] (contiguous expected)",
                                 w.rows(), w.cols(), fmt::join(x.sizes(), ", "), fmt::join(y.sizes(), ", ")));
  if (!matvec_isa_supported(isa))
    throw InputError(fmt::format("gemm_quant: this CPU does not support the {} path", matvec_isa_name(isa)));
  torch::Tensor scratch;
  gemm_quant(w, x.data_ptr<float>(), x.size(0), y.data_ptr<float>(), isa, scratch, passes);
}

}  // namespace iadgpt::nn
