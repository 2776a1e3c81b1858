// Seeds derived from (seed, purpose, indices): the trainer draws every random choice from one of
// these, never from a global generator, so a run is reproducible whatever the order of work.
#pragma once
#include <cstdint>
#include <initializer_list>

#include "io/splitmix.h"

namespace iadgpt::train {

inline uint64_t mix(uint64_t x) { return io::splitmix64(x); }
inline uint64_t mix(std::initializer_list<uint64_t> parts) {
  uint64_t h = 0x51ED270B27D3A4F1ULL;
  for (auto p : parts) h = mix(h ^ mix(p));
  return h;
}
// A uniform double in [0, 1) from a seed.
inline double unit(uint64_t x) { return static_cast<double>(mix(x) >> 11) * 0x1.0p-53; }

}  // namespace iadgpt::train
