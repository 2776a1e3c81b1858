// io::release_free_heap: freed heap memory that glibc keeps resident goes back to the system.
#include <gtest/gtest.h>
#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "common/proc_status.h"
#include "io/heap.h"

TEST(Heap, FreedBlocksThatTheHeapKeepsGoBackToTheSystem) {
  // What a loader leaves: 8 MiB records from the heap (glibc's threshold, raised by earlier frees
  // of large blocks, keeps them out of mmap; set here so the test does not depend on history),
  // freed below a block still in use, so the heap's top cannot shrink on its own.
  ASSERT_EQ(mallopt(M_MMAP_THRESHOLD, 32 << 20), 1);
  ASSERT_EQ(mallopt(M_TRIM_THRESHOLD, 1 << 30), 1);
  constexpr size_t kBlock = 8 << 20, kBlocks = 48;  // 384 MiB
  std::vector<void*> blocks;
  for (size_t i = 0; i < kBlocks; ++i) {
    blocks.push_back(std::malloc(kBlock));
    ASSERT_NE(blocks.back(), nullptr);
    std::memset(blocks.back(), 1, kBlock);  // resident
  }
  void* pin = std::malloc(4096);  // above the blocks
  ASSERT_NE(pin, nullptr);
  const int64_t touched = iadgpt::test::proc_status_bytes("RssAnon");
  for (void* b : blocks) std::free(b);
  const int64_t freed = iadgpt::test::proc_status_bytes("RssAnon");
  // The premise: free() alone leaves nearly all of it resident.
  ASSERT_GE(freed, touched - (64 << 20)) << "free() already returned the blocks; the test premise does not hold";

  EXPECT_TRUE(iadgpt::io::release_free_heap());
  const int64_t released = iadgpt::test::proc_status_bytes("RssAnon");
  std::cout << "[ measured ] RssAnon " << touched / (1 << 20) << " MiB, after free " << freed / (1 << 20)
            << " MiB, after release_free_heap " << released / (1 << 20) << " MiB\n";
  // All but a page or two per freed chunk go back; 32 MiB of slack for whatever else this
  // process allocates meanwhile (libtorch's threads).
  EXPECT_LE(released, freed - static_cast<int64_t>(kBlock * kBlocks) + (32 << 20));
  std::free(pin);
  // Back to glibc's defaults for the rest of the binary (the dynamic threshold stays off).
  mallopt(M_MMAP_THRESHOLD, 128 << 10);
  mallopt(M_TRIM_THRESHOLD, 128 << 10);
}
