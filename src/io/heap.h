// Returning freed heap memory to the system after a load.
#pragma once
#include <cstddef>

namespace iadgpt::io {

// Loaders free large temporaries: fp32 records converted to bf16 (a text tower read from an
// ImageBind `.pth` frees ~1.4 GB of them). glibc raises its mmap threshold to the size of the
// largest block freed (up to 32 MiB), so such records come from the heap, and the heap keeps
// freed pages resident: 1 GiB of a 3.2 GiB RSS after loading ImageBind-Huge + a 7B LLM was freed
// memory. malloc_trim(0) hands every free page of every arena back. Returns whether it did
// (true when pages went back; false when none did or the C library has no malloc_trim). Costs
// milliseconds; call once a load is done.
bool release_free_heap();

}  // namespace iadgpt::io
