// The text tower read from an ImageBind `.pth` (fp32 records) in bf16: each matrix is converted
// as its record is read, so the peak stays near the bf16 tower, not the fp32 file.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "common/imagebind_layout.h"
#include "common/proc_status.h"
#include "common/shared.h"
#include "io/heap.h"
#include "text/text_tower.h"

TEST(TextLoadMemory, Bf16TowerFromAnFp32PthPeaksNearItsOwnSize) {
  // Width 512, 12 blocks, a 4096-row vocabulary: 160 MiB of fp32 records, none over 4 MiB; the
  // bf16 tower is half of that.
  const auto path = iadgpt::test::scratch("text-load-memory") / "imagebind_text.pth";
  std::vector<iadgpt::test::TensorSpec> specs;
  iadgpt::test::add_imagebind_text(specs, 512, 12, 256, 4096);
  torch::manual_seed(0);
  iadgpt::test::write_torch_save(path, specs, [&](size_t i) { return iadgpt::test::imagebind_random_value(specs[i]); });
  int64_t stored = 0;
  for (const auto& s : specs) {
    int64_t n = 1;
    for (auto d : s.shape) n *= d;
    stored += 4 * n;
  }
  iadgpt::io::release_free_heap();
  iadgpt::text::TextTower tower;
  const int64_t rise = iadgpt::test::peak_rss_rise(
      [&] { tower = iadgpt::text::load_text_tower(path, {.dtype = torch::kBFloat16}); });
  std::cout << "[ measured ] peak RSS rise " << rise / (1 << 20) << " MiB; file " << stored / (1 << 20) << " MiB fp32\n";
  EXPECT_EQ(tower.weights.token_embedding.scalar_type(), torch::kBFloat16);
  // The bf16 tower (50 % of the file) plus the largest record read (4 MiB): measured 58 %. The
  // bound, 80 %, leaves room for the allocator; reading every record as stored first holds the
  // whole file and then the tower beside it (153 % measured).
  EXPECT_LT(rise, stored * 80 / 100);
}
