#include "runtime/engine/preflight.h"

#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "models/gpt.h"
#include "runtime/core/error.h"
#include "runtime/core/memory_stats.h"
#include "runtime/core/settings.h"

TS_SETTING("TESSERA_SKIP_MEMORY_CHECK", "0",
           "1: start a run even when its memory plan exceeds the memory available");

namespace tessera::engine {
namespace {

int64_t read_number(const std::string& path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word == "max") return -1;
  try {
    return std::stoll(word);
  } catch (const std::exception&) {
    return -1;
  }
}

}  // namespace

int64_t available_memory_bytes(const std::string& meminfo, const std::string& cgroup_root) {
  int64_t available = std::numeric_limits<int64_t>::max();
  std::ifstream in(meminfo);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key;
    int64_t kib = 0;
    if (fields >> key >> kib && key == "MemAvailable:") available = kib * 1024;
  }
  // cgroup v2, then v1 (a v1 "no limit" is a huge number, which the min ignores).
  for (const auto& [limit_file, usage_file] :
       {std::pair<std::string, std::string>{"memory.max", "memory.current"},
        {"memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"}}) {
    const int64_t limit = read_number(cgroup_root + "/" + limit_file);
    const int64_t usage = read_number(cgroup_root + "/" + usage_file);
    if (limit > 0 && usage >= 0) available = std::min(available, std::max<int64_t>(0, limit - usage));
  }
  return available;
}

MemoryNeed plan_rank_memory(const TrainConfig& c, const ParamRegistry& registry, int dp,
                            int wte_chunks) {
  memory::ZeroOptions z = c.zero.options();
  z.dtype = c.precision;
  const memory::ModelStateBytes b = memory::plan_model_state(registry, z, 0, dp);
  MemoryNeed need;
  need.params = b.params;
  need.grads = b.grads;
  need.optimizer = b.optimizer;
  need.pinned = b.pinned;
  need.gathered = memory::plan_gathered_bytes(registry, z, dp);
  // One stage's activations: the whole model's blocks without pipelines (with them a stage
  // holds a part, and its slots depend on the schedule: left out, the check stays a floor).
  if (c.pipeline_parallel == 1 && c.micro_batch_size > 0) {
    const models::TpLayout tp{c.tensor_parallel, 0, c.sequence_parallel};
    need.activations = models::GPT<float>::activation_bytes_for(
        c.model, c.micro_batch_size, c.seq_len > 0 ? c.seq_len : c.model.block_size, c.precision,
        c.recompute, wte_chunks, tp);
  }
  return need;
}

void check_memory_fits(const TrainConfig& c, const ParamRegistry& registry, int dp,
                       int wte_chunks, int ranks_here, int64_t available) {
  const MemoryNeed need = plan_rank_memory(c, registry, dp, wte_chunks);
  const int64_t total = need.total() * ranks_here;
  if (total <= available) return;
  // The levers, each tried alone and then together, by the same plan.
  std::vector<std::string> fits;
  const auto try_lever = [&](const std::string& name, TrainConfig alt) {
    if (plan_rank_memory(alt, registry, dp, wte_chunks).total() * ranks_here <= available) {
      fits.push_back(name);
    }
  };
  TrainConfig stage3 = c;
  stage3.zero.stage = 3;
  if (c.zero.stage < 3 && c.pipeline_parallel == 1 && dp > 1) try_lever("zero_optimization.stage 3", stage3);
  TrainConfig nvme = c;
  if (nvme.zero.stage == 0) nvme.zero.stage = 1;
  nvme.zero.offload_optimizer.device = memory::OffloadDevice::Nvme;
  nvme.zero.offload_optimizer.buffer_count = c.precision == DType::F32 ? 6 : 9;
  nvme.zero.sub_group_size = std::min<int64_t>(c.zero.sub_group_size, 100'000'000);
  if (c.zero.offload_optimizer.device != memory::OffloadDevice::Nvme) {
    try_lever("offload_optimizer nvme with sub_group_size 1e8", nvme);
  }
  // Stage 3's parameters on disk too (stage 3 holds only a shard; on one rank that is all).
  TrainConfig params = nvme;
  const bool can_offload_params = c.pipeline_parallel == 1 && (c.zero.stage == 3 || dp == 1);
  params.zero.stage = 3;
  params.zero.offload_param.device = memory::OffloadDevice::Nvme;
  params.zero.offload_param.max_in_cpu = 0;
  params.zero.offload_param.buffer_size = std::numeric_limits<int64_t>::max();
  if (can_offload_params && c.zero.offload_param.device != memory::OffloadDevice::Nvme) {
    try_lever("zero_optimization.stage 3 with offload_optimizer and offload_param nvme "
              "(max_in_cpu 0)",
              params);
  }
  TrainConfig recompute = c;
  recompute.recompute.granularity = models::RecomputeGranularity::Full;
  if (c.recompute.granularity != models::RecomputeGranularity::Full) {
    try_lever("activation_checkpointing (full)", recompute);
  }
  if (fits.empty()) {
    TrainConfig together = can_offload_params ? params : nvme;
    together.recompute.granularity = models::RecomputeGranularity::Full;
    if (c.zero.stage < 3 && c.pipeline_parallel == 1 && dp > 1) together.zero.stage = 3;
    try_lever(fmt::format("{}offload_optimizer nvme with sub_group_size 1e8{} and "
                          "activation_checkpointing (full)",
                          together.zero.stage != c.zero.stage
                              ? fmt::format("zero_optimization.stage {}, ", together.zero.stage)
                              : "",
                          can_offload_params ? ", offload_param nvme" : ""),
              together);
  }
  const std::string levers =
      fits.empty() ? "more data-parallel ranks (ZeRO shards the state over them), a smaller "
                     "micro-batch, or a smaller model"
                   : fmt::format("{} would fit, by the plan", fmt::join(fits, "; or "));
  TS_THROW(InvalidArgument,
           "memory: this run needs {} per rank (params {}, grads {}, optimizer {}, gathered {}, "
           "activations {}){} and {} is available to this process (MemAvailable and the cgroup "
           "limit): {}; TESSERA_SKIP_MEMORY_CHECK=1 runs it anyway",
           format_bytes(need.total()), format_bytes(need.params), format_bytes(need.grads),
           format_bytes(need.optimizer), format_bytes(need.gathered),
           format_bytes(need.activations),
           ranks_here > 1 ? fmt::format(" x {} ranks on this machine = {}", ranks_here,
                                        format_bytes(total))
                          : std::string(),
           format_bytes(available), levers);
}

int64_t lockable_memory_bytes(const std::string& status) {
  std::ifstream in(status);
  std::string line;
  constexpr int kCapIpcLock = 14;  // linux/capability.h
  while (std::getline(in, line)) {
    if (line.rfind("CapEff:", 0) != 0) continue;
    try {
      if ((std::stoull(line.substr(7), nullptr, 16) >> kCapIpcLock) & 1) return -1;
    } catch (const std::exception&) {
      // an unreadable line: fall back to the limit
    }
  }
  rlimit limit{};
  if (getrlimit(RLIMIT_MEMLOCK, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return -1;
  return static_cast<int64_t>(limit.rlim_cur);
}

void check_pinned_fits(const TrainConfig& c, const ParamRegistry& registry, int dp,
                       int ranks_in_process, int64_t lockable) {
  if (!c.zero.offload_optimizer.pin_memory || lockable < 0) return;
  const int64_t pinned = plan_rank_memory(c, registry, dp, 1).pinned;
  const int64_t total = pinned * std::max(1, ranks_in_process);
  if (pinned == 0 || total <= lockable) return;
  TS_THROW(InvalidArgument,
           "pinned memory: offload_optimizer.pin_memory locks {} per rank (the fp32 states, the "
           "gradients' host copy and two staging buffers){} and this process may lock {} "
           "(ulimit -l): raise the limit (ulimit -l unlimited; docker --ulimit memlock=-1; "
           "systemd LimitMEMLOCK=infinity) or set offload_optimizer.pin_memory false",
           format_bytes(pinned),
           ranks_in_process > 1
               ? fmt::format(" x {} ranks in this process = {}", ranks_in_process, format_bytes(total))
               : std::string(),
           format_bytes(lockable));
}

int64_t free_disk_bytes(const std::string& path) {
  struct statvfs vfs {};
  if (::statvfs(path.c_str(), &vfs) != 0) return -1;
  return static_cast<int64_t>(vfs.f_bavail) * static_cast<int64_t>(vfs.f_frsize);
}

namespace {

bool on_one_file_system(const std::string& a, const std::string& b) {
  struct stat sa {}, sb {};
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev;
}

}  // namespace

void check_disk_fits(const TrainConfig& c, const ParamRegistry& registry, int dp, int ranks_here,
                     const std::function<int64_t(const std::string&)>& free_bytes,
                     const std::function<bool(const std::string&, const std::string&)>& same_fs) {
  memory::ZeroOptions z = c.zero.options();
  z.dtype = c.precision;
  const memory::ModelStateBytes b = memory::plan_model_state(registry, z, 0, dp);
  if (b.disk == 0) return;
  const int n = std::max(1, ranks_here);
  struct Need {
    std::string path, what;
    int64_t bytes;
  };
  std::vector<Need> needs;
  const int64_t optimizer = (b.disk - b.param_disk) * n, params = b.param_disk * n;
  const std::string& opt_path = c.zero.offload_optimizer.nvme_path;
  const std::string& param_path = c.zero.offload_param.nvme_path;
  const bool together = optimizer > 0 && params > 0 &&
                        (opt_path == param_path ||
                         (same_fs ? same_fs(opt_path, param_path)
                                  : on_one_file_system(opt_path, param_path)));
  if (together) {
    needs.push_back({opt_path, "the optimizer's and the parameters' swap files need", optimizer + params});
  } else {
    if (optimizer > 0) needs.push_back({opt_path, "the optimizer's swap file needs", optimizer});
    if (params > 0) needs.push_back({param_path, "the parameters' swap file needs", params});
  }
  for (const Need& need : needs) {
    const int64_t free = free_bytes(need.path);
    if (free < 0 || need.bytes <= free) continue;
    TS_THROW(InvalidArgument,
             "disk: {} {}{} in '{}' and it has {} free: free space there, point nvme_path at "
             "a larger disk, or spread the model over more machines",
             need.what, format_bytes(need.bytes / n),
             n > 1 ? fmt::format(" per rank x {} ranks on this machine = {}", n,
                                 format_bytes(need.bytes))
                   : std::string(),
             need.path, format_bytes(free));
  }
}

int ranks_on_this_machine(int thread_ranks) {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE",
                          "LOCAL_WORLD_SIZE"}) {
    if (const char* v = std::getenv(var)) {
      const int n = std::atoi(v);
      if (n >= 1) return n * std::max(1, thread_ranks);
    }
  }
  return std::max(1, thread_ranks);
}

}  // namespace tessera::engine
