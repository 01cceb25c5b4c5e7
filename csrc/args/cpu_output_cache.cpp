// The CPU output cache (csrc/args/cpu_output_cache.h). A block is [header | data]: the header (64 bytes, so
// the data keeps the 64-byte alignment torch's CPU allocator gives) holds the block's size, and the DataPtr's
// context is its data pointer, as for torch's own CPU allocations.
#include "args/cpu_output_cache.h"

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#ifdef __linux__
#include <sys/mman.h>
#endif
#include <pthread.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <vector>

namespace cifarops {
namespace {

constexpr size_t kHeader = 64;
constexpr size_t kHugePage = size_t(1) << 21;
constexpr size_t kMinCached = size_t(1) << 20;  // below this torch's allocator (glibc's heap) is as good
constexpr int64_t kDefaultLimitMiB = 1024;

int64_t limit_from_env() {
  const char* setting = std::getenv("CIFAROPS_CPU_CACHE_MB");
  if (setting == nullptr || *setting == '\0') return kDefaultLimitMiB << 20;
  char* end = nullptr;
  const long long mib = std::strtoll(setting, &end, 10);
  TORCH_CHECK_VALUE(end != setting && *end == '\0' && mib >= 0,
                    "cifarops: CIFAROPS_CPU_CACHE_MB must be a whole number of MiB (0 turns the cache off), got '",
                    setting, "'");
  return static_cast<int64_t>(mib) << 20;
}

bool huge_pages_enabled() {
  const char* setting = std::getenv("CIFAROPS_HUGE_PAGES");
  return setting == nullptr || std::string(setting) != "0";
}

// The header: the block's size, and the size asked for (what the memory profiler was told).
size_t* header(void* data) { return reinterpret_cast<size_t*>(static_cast<char*>(data) - kHeader); }

void report_to_profiler(void* data, int64_t bytes) {
  if (c10::memoryProfilingEnabled()) {
    c10::reportMemoryUsageToProfiler(data, bytes, 0, 0, c10::Device(c10::DeviceType::CPU));
  }
}

void* new_block(size_t block_bytes) {
  void* block = nullptr;
  if (posix_memalign(&block, kHugePage, block_bytes) != 0) return nullptr;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool advise = huge_pages_enabled();
  if (advise) madvise(block, block_bytes, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
  return block;
}

class CpuOutputCache final : public c10::Allocator {
 public:
  CpuOutputCache() : limit_(limit_from_env()) {
    // A fork while another thread holds the lock would leave it held in the child (a DataLoader worker).
    pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                   [] { instance().mutex_.unlock(); });
  }

  static CpuOutputCache& instance() {
    // Never destroyed: tensors may still be freed while the process exits.
    static CpuOutputCache* cache = new CpuOutputCache();
    return *cache;
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinCached) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = (n + kHeader + kHugePage - 1) & ~(kHugePage - 1);
    void* block = take(bytes);
    if (block == nullptr) {
      block = new_block(bytes);
      TORCH_CHECK(block != nullptr, "cifarops: out of CPU memory allocating ", bytes, " bytes for an output");
    }
    void* data = static_cast<char*>(block) + kHeader;
    header(data)[0] = bytes;
    header(data)[1] = n;
    report_to_profiler(data, static_cast<int64_t>(n));
    return {data, data, &give_back, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }  // not all pointers are ours

  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }

  CpuOutputCacheInfo info() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {static_cast<int64_t>(cached_bytes_), limit_, hits_, misses_};
  }

  void set_limit(int64_t bytes) {
    std::unique_lock<std::mutex> lock(mutex_);
    limit_ = bytes;
    free_unlocked(evict_beyond(static_cast<size_t>(bytes)), lock);
  }

  void empty() {
    std::unique_lock<std::mutex> lock(mutex_);
    free_unlocked(evict_beyond(0), lock);
  }

 private:
  struct Block {
    void* block;
    size_t bytes;
  };

  // The most recently kept block of exactly this size: the likeliest to be in the caches still.
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = kept_.rbegin(); it != kept_.rend(); ++it) {
      if (it->bytes == bytes) {
        void* block = it->block;
        kept_.erase(std::next(it).base());
        cached_bytes_ -= bytes;
        ++hits_;
        return block;
      }
    }
    ++misses_;
    return nullptr;
  }

  static void give_back(void* data) {
    CpuOutputCache& cache = instance();
    void* block = static_cast<char*>(data) - kHeader;
    const size_t bytes = header(data)[0];
    report_to_profiler(data, -static_cast<int64_t>(header(data)[1]));
    std::unique_lock<std::mutex> lock(cache.mutex_);
    if (static_cast<int64_t>(bytes) > cache.limit_) {
      lock.unlock();
      std::free(block);
      return;
    }
    cache.kept_.push_back({block, bytes});
    cache.cached_bytes_ += bytes;
    free_unlocked(cache.evict_beyond(static_cast<size_t>(cache.limit_)), lock);
  }

  // The oldest kept blocks beyond `limit` bytes, taken out of the cache (under the lock).
  std::vector<Block> evict_beyond(size_t limit) {
    size_t oldest = 0;
    while (cached_bytes_ > limit) cached_bytes_ -= kept_[oldest++].bytes;
    std::vector<Block> evicted(kept_.begin(), kept_.begin() + static_cast<std::ptrdiff_t>(oldest));
    kept_.erase(kept_.begin(), kept_.begin() + static_cast<std::ptrdiff_t>(oldest));
    return evicted;
  }

  // Frees evicted blocks after releasing the lock: unmapping takes a while.
  static void free_unlocked(const std::vector<Block>& blocks, std::unique_lock<std::mutex>& lock) {
    lock.unlock();
    for (const Block& b : blocks) std::free(b.block);
  }

  std::mutex mutex_;
  std::vector<Block> kept_;  // oldest first
  size_t cached_bytes_ = 0;
  int64_t limit_;
  int64_t hits_ = 0;
  int64_t misses_ = 0;
};

}  // namespace

c10::Allocator* cpu_output_allocator() { return &CpuOutputCache::instance(); }
CpuOutputCacheInfo cpu_output_cache_info() { return CpuOutputCache::instance().info(); }
void empty_cpu_output_cache() { CpuOutputCache::instance().empty(); }

void set_cpu_output_cache_limit(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes >= 0, "cifarops: the CPU output cache's limit must be at least 0 bytes, got ", bytes);
  CpuOutputCache::instance().set_limit(bytes);
}

}  // namespace cifarops
