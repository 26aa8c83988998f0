// The cache of large CPU tensor buffers (see cpu-allocator.cc).
#pragma once

#include <cstddef>
#include <cstdint>

namespace repopt {

struct CpuCacheStats {
  size_t liveBytes = 0;    // large blocks in use by tensors
  size_t cachedBytes = 0;  // large blocks on the free lists
  uint64_t hits = 0;       // large requests served from the cache
  uint64_t misses = 0;     // large requests that mapped a new block
};

// Registers the cache as libtorch's CPU allocator (once per process; REPOPT_CPU_CACHE=0 skips it).
// Returns whether it is installed.
bool InstallCpuCache();
// Releases the blocks that stayed unused since the previous call (call once per training step).
void TrimCpuCache();
// Releases every cached block.
void EmptyCpuCache();
CpuCacheStats CpuCacheStatsNow();

}  // namespace repopt
