#include "io/heap.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace iadgpt::io {

bool release_free_heap() {
#if defined(__GLIBC__)
  return ::malloc_trim(0) != 0;
#else
  return false;
#endif
}

}  // namespace iadgpt::io
