// A cache of large CPU tensor buffers, registered as libtorch's CPU allocator (issue 13, memory).
//
// Why: libtorch's default CPU allocator is posix_memalign, i.e. glibc malloc. A training step frees
// and reallocates the same multi-MiB activations every step. Above glibc's mmap threshold they are
// fresh mmaps, page-faulted on every step (tens of ms per step); below it they live in the heap,
// where freed activations are split for smaller ones and the next large request extends the heap
// instead: at batches near a memory cap the peak RSS then depends on heap layout, not on live
// tensors (RepVGG mode, bench model: 918 MiB at batch 144 against 575 MiB without the fragmentation).
// This cache keeps every buffer of at least kMinBytes in its own mmap, rounded up to whole pages,
// and on free keeps it on a free list of its exact size; a request of that size takes it back
// untouched (no page faults), a request of another size never splits it (no fragmentation); a
// request with no block of its size takes a cached block of up to twice its size whole.
//
// Bound: a block is made only when no cached block of its size (or up to twice it) is free, so the
// cache never holds more than the largest number of blocks in use at once. At each step boundary (`trim`, called once per
// training step) the blocks that sat unused on their free list during the whole last window (the
// low-water mark of each list) go back to the kernel: in a steady training loop every list empties
// at some point of the step and nothing is released; after a change of shapes (evaluation, another
// batch size) the stale sizes are released one window later. `releaseAll` empties the cache.
#include "cpu-allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace repopt {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;  // smaller buffers: glibc (its heap serves them well)

struct SizeClass {
  std::vector<void*> free;  // cached blocks of this exact size
  size_t lowWater = 0;      // fewest cached blocks seen since the last trim
};

class LargeBlockCache final : public c10::Allocator {
 public:
  explicit LargeBlockCache(c10::Allocator* fallback) : fallback_(fallback), page_(static_cast<size_t>(sysconf(_SC_PAGESIZE))) {}

  c10::DataPtr allocate(size_t n) const override {
    if (n < kMinBytes) return fallback_->allocate(n);
    return self().allocateLarge(n);
  }

  static void Delete(void* p);
  // raw_allocate/raw_deallocate (used by some kernels) need one deleter for every pointer this
  // allocator returns, small ones (the fallback's) included.
  static void RawDelete(void* p);
  c10::DeleterFnPtr raw_deleter() const override { return &LargeBlockCache::RawDelete; }

  void trim() {
    std::vector<std::pair<void*, size_t>> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& [size, c] : classes_) {
        size_t n = std::min(c.lowWater, c.free.size());
        for (size_t i = 0; i < n; i++) {
          drop.emplace_back(c.free.back(), size);
          c.free.pop_back();
          stats_.cachedBytes -= size;
        }
        c.lowWater = c.free.size();
      }
    }
    for (auto& [p, size] : drop) munmap(p, size);
  }

  void releaseAll() {
    std::vector<std::pair<void*, size_t>> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      collectAllLocked(drop);
    }
    for (auto& [p, size] : drop) munmap(p, size);
  }

  CpuCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  // Takes back a block of this cache; false when `p` is not one.
  bool release(void* p) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(p);
    if (it == live_.end()) return false;
    size_t size = it->second;
    live_.erase(it);
    stats_.liveBytes -= size;
    classes_[size].free.push_back(p);
    stats_.cachedBytes += size;
    return true;
  }

  c10::DeleterFnPtr fallbackRawDeleter() const { return fallback_->raw_deleter(); }

 private:
  LargeBlockCache& self() const { return const_cast<LargeBlockCache&>(*this); }

  void collectAllLocked(std::vector<std::pair<void*, size_t>>& drop) {
    for (auto& [size, c] : classes_) {
      for (void* p : c.free) drop.emplace_back(p, size);
      c.free.clear();
      c.lowWater = 0;
    }
    stats_.cachedBytes = 0;
  }

  c10::DataPtr allocateLarge(size_t n) {
    size_t size = (n + page_ - 1) / page_ * page_;
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // The exact size first; else the smallest cached block of at most twice the size (taken whole
      // and returned to its own list), so that a smaller batch (an epoch's last one) or an
      // evaluation reuses the training step's buffers instead of mapping new ones beside them.
      for (auto it = classes_.lower_bound(size); it != classes_.end() && it->first <= 2 * size; ++it) {
        SizeClass& c = it->second;
        if (c.free.empty()) continue;
        p = c.free.back();
        c.free.pop_back();
        c.lowWater = std::min(c.lowWater, c.free.size());
        stats_.cachedBytes -= it->first;
        stats_.hits++;
        live_.emplace(p, it->first);
        stats_.liveBytes += it->first;
        break;
      }
    }
    if (!p) {
      p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) {  // out of address space or memory: give the cache back and retry once
        releaseAll();
        p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      }
      TORCH_CHECK(p != MAP_FAILED, "DefaultCPUAllocator: not enough memory: you tried to allocate ", n, " bytes.");
      std::lock_guard<std::mutex> lock(mutex_);
      stats_.misses++;
      live_.emplace(p, size);
      stats_.liveBytes += size;
    }
    return {p, p, &LargeBlockCache::Delete, c10::Device(c10::DeviceType::CPU)};
  }

  c10::Allocator* fallback_;
  size_t page_;
  std::mutex mutex_;
  std::map<size_t, SizeClass> classes_;  // by block size
  std::unordered_map<void*, size_t> live_;
  CpuCacheStats stats_;
};

LargeBlockCache* g_cache = nullptr;  // never deleted: tensors may outlive everything else

void LargeBlockCache::Delete(void* p) {
  bool ours = g_cache->release(p);
  TORCH_INTERNAL_ASSERT(ours, "repopt CPU cache: freeing a block it does not hold");
}

void LargeBlockCache::RawDelete(void* p) {
  if (!g_cache->release(p)) g_cache->fallbackRawDeleter()(p);
}

}  // namespace

bool InstallCpuCache() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* off = std::getenv("REPOPT_CPU_CACHE");
    if (off && std::string(off) == "0") return;
    // Buffers under 1 MiB stay with glibc. Its dynamic thresholds start low (mmap 128 KiB, heap trim
    // 256 KiB): the heap's top would go back to the kernel after every step and fault in again.
    // Freeing one untouched 31 MiB mmapped block raises them (mmap 31 MiB, trim 62 MiB) as a freed
    // large tensor would (the priming src/torch/native.ts did before this cache; REPOPT_NO_MALLOC_PRIME=1 skips it).
    const char* noPrime = std::getenv("REPOPT_NO_MALLOC_PRIME");
    if (!(noPrime && std::string(noPrime) == "1")) {
      void* volatile block = std::malloc(size_t(31) << 20);
      std::free(block);
    }
    g_cache = new LargeBlockCache(c10::GetDefaultCPUAllocator());
    // Priority above the default (0): the same setting PyTorch's own opt-in allocators use.
    c10::SetCPUAllocator(g_cache, /*priority=*/1);
  });
  return g_cache != nullptr;
}

void TrimCpuCache() {
  if (g_cache) g_cache->trim();
}

void EmptyCpuCache() {
  if (g_cache) g_cache->releaseAll();
}

CpuCacheStats CpuCacheStatsNow() { return g_cache ? g_cache->stats() : CpuCacheStats{}; }

}  // namespace repopt
