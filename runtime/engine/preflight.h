// Checks before a run allocates: the bytes the memory plan says each rank will hold, times the
// ranks that share this machine's memory, against what the process may use (MemAvailable and
// any cgroup limit). A run that cannot fit is refused with one line naming what it needs,
// what is there, and the settings that would fit, instead of being killed by the kernel's OOM
// killer with an empty log.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/core/params.h"
#include "runtime/engine/config.h"

namespace tessera::engine {

// Bytes this process may still allocate: MemAvailable, capped by the cgroup's limit less its
// usage (v2 memory.max / memory.current, or v1 memory.limit_in_bytes / usage_in_bytes).
// `meminfo` and `cgroup_root` are for tests.
int64_t available_memory_bytes(const std::string& meminfo = "/proc/meminfo",
                               const std::string& cgroup_root = "/sys/fs/cgroup");

struct MemoryNeed {
  int64_t params = 0, grads = 0, optimizer = 0, gathered = 0, activations = 0;
  // Of the above, page-locked by the host tier (offload_optimizer cpu).
  int64_t pinned = 0;
  int64_t total() const { return params + grads + optimizer + gathered + activations; }
};
// One rank's planned bytes for config `c` over its local registry (`registry`, its own part
// under tensor or pipeline parallelism) at data-parallel size dp (rank 0: the fullest shard).
MemoryNeed plan_rank_memory(const TrainConfig& c, const ParamRegistry& registry, int dp,
                            int wte_chunks);

// Throws InvalidArgument when ranks_here x need exceeds `available`, naming the levers (of
// ZeRO stage 3, offloading the optimizer to NVMe, full activation checkpointing) that the
// plan says would fit.
void check_memory_fits(const TrainConfig& c, const ParamRegistry& registry, int dp,
                       int wte_chunks, int ranks_here, int64_t available);

// Bytes this process may lock in memory (mlock): RLIMIT_MEMLOCK's soft limit, or -1 when
// there is none (unlimited, or CAP_IPC_LOCK in the effective set, as root usually has).
// `status` is for tests (/proc/self/status, whose CapEff line holds the capabilities).
int64_t lockable_memory_bytes(const std::string& status = "/proc/self/status");

// offload_optimizer.pin_memory with the host tier: throws InvalidArgument when the page-locked
// bytes of the `ranks_in_process` ranks that share this process (its locked-memory limit)
// exceed `lockable` (-1: no limit), naming the bytes, the limit and the fixes.
void check_pinned_fits(const TrainConfig& c, const ParamRegistry& registry, int dp,
                       int ranks_in_process, int64_t lockable);

// Bytes an unprivileged writer may still use at `path` (statvfs f_bavail), or -1 when it
// cannot be read (a missing nvme_path: the swap file's creation names that problem).
int64_t free_disk_bytes(const std::string& path);

// The swap files of offload_optimizer / offload_param nvme for the `ranks_here` ranks on this
// machine against the free space at their nvme_path (summed when both are on one file
// system): throws InvalidArgument naming the bytes needed, the bytes free and the fixes.
// `free_bytes` and `same_file_system` are for tests.
void check_disk_fits(
    const TrainConfig& c, const ParamRegistry& registry, int dp, int ranks_here,
    const std::function<int64_t(const std::string&)>& free_bytes = free_disk_bytes,
    const std::function<bool(const std::string&, const std::string&)>& same_file_system = {});

// Ranks of this job sharing this machine's memory: the launcher's local size (OpenMPI, Slurm,
// torchrun) when set, else `thread_ranks` (ranks that are threads of this process).
int ranks_on_this_machine(int thread_ranks);

}  // namespace tessera::engine
