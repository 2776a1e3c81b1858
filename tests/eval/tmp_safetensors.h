// TEMPORARY stand-in for io::load_safetensors until branch `io` is merged (then deleted).
#pragma once
#include "io/checkpoint.h"

namespace iadgpt::test {
io::TensorMap load_tensors(const std::filesystem::path& path);
}
