#include "io/checkpoint.h"
#include <fmt/format.h>
namespace iadgpt::io {
TensorMap load_torch_zip(const std::filesystem::path& path, bool*) {
  throw InputError(fmt::format("{}: PyTorch zip checkpoints are not supported yet", path.string()));
}
}  // namespace iadgpt::io
