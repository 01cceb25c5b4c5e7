// The allocator of the CPU ops' large outputs: a small cache of the blocks earlier outputs used, so that a
// call's output is usually memory this process has touched before.
//
// Why: a fresh buffer costs a page fault per page on its first touch, and on a virtual machine with free-page
// reporting (Firecracker's and QEMU's virtio-balloon, as on this project's 2-core machines) every 2 MiB block
// the guest frees goes back to the host at once, so touching one again also costs the host a fault per 4 KiB.
// Measured here: the ShakeDrop forward on a 32 MiB tensor took 4 ms in some fresh processes and 17-35 ms in
// others, with the same page faults counted by the guest, the extra time all in the kernel's clearing of those
// huge pages. A reused block has neither cost. torch's CPU allocator keeps nothing (glibc maps and unmaps
// buffers above its 32 MiB mmap threshold every time), so the cache is ours, bounded and for our outputs only.
//
// Blocks of at least 1 MiB are 2 MiB-aligned multiples of 2 MiB, advised to use transparent huge pages once, at
// creation (CIFAROPS_HUGE_PAGES=0 turns the advice off); a freed output's block is kept while the cache holds
// at most its limit (CIFAROPS_CPU_CACHE_MB, 1024 by default, 0 turns the cache off), the oldest evicted first.
// Smaller outputs come from torch's CPU allocator.
#pragma once

#include <c10/core/Allocator.h>

#include <cstdint>

namespace cifarops {

c10::Allocator* cpu_output_allocator();

struct CpuOutputCacheInfo {
  int64_t cached_bytes;  // in blocks no tensor uses, kept for the next outputs
  int64_t limit_bytes;
  int64_t hits;          // outputs served from a kept block
  int64_t misses;        // outputs of cacheable size that needed a new block
};

CpuOutputCacheInfo cpu_output_cache_info();
// Frees the kept blocks (the blocks tensors still use come back to the cache, within its limit, when freed).
void empty_cpu_output_cache();
// Sets the limit (bytes, 0: keep nothing), evicting the oldest kept blocks beyond it.
void set_cpu_output_cache_limit(int64_t bytes);

}  // namespace cifarops
