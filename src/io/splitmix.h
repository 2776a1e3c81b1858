// SplitMix64 (Steele, Lea & Flood 2014): one 64-bit value to a well-mixed one. Seeds derived from
// (seed, step, example, ...) go through it, so nearby inputs give unrelated random streams without
// any global RNG — what exact resume and data-parallel equality rely on.
#pragma once
#include <cstdint>

namespace iadgpt::io {

constexpr uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

}  // namespace iadgpt::io
