// The start-up memory check (runtime/engine/preflight.h):
// - MemAvailable is read from /proc/meminfo's format and capped by a cgroup v2 or v1 limit
//   less its usage ("max" and a missing file mean no limit);
// - the plan per rank is the memory plan's (model state, stage-3 gathered layers,
//   activations), and offloading the optimizer to NVMe shrinks its optimizer term to the
//   sub-group buffers;
// - a run that does not fit is refused with one line naming what it needs, what is there and
//   the levers that fit by the same plan; the ranks sharing the machine multiply the need;
// - the host tier (offload_optimizer cpu) plans its page-locked pool, and with pin_memory the
//   ranks of a process must fit in its locked-memory limit (RLIMIT_MEMLOCK, none with
//   CAP_IPC_LOCK), or the run is refused with the bytes, the limit and the fixes;
// - the swap files of the ranks on this machine must fit in the free space of their
//   nvme_path (one sum where optimizer and parameters share a file system);
// - the trainer runs the check before allocating, on every rank.
#include "runtime/engine/preflight.h"

#include <gtest/gtest.h>

#include <sys/resource.h>

#include <filesystem>
#include <map>
#include <fstream>

#include "engine_test_util.h"
#include "models/gpt.h"
#include "runtime/engine/trainer.h"

namespace tessera::engine {
namespace {

namespace fs = std::filesystem;
using test_util::Contains;
using test_util::ScratchDir;

void write(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path) << text;
}

TEST(Preflight, AvailableMemoryIsMemAvailableCappedByTheCgroup) {
  ScratchDir dir;
  write(dir.file("meminfo"), "MemTotal:       24000000 kB\nMemFree:  100 kB\n"
                             "MemAvailable:   20000000 kB\nBuffers: 5 kB\n");
  EXPECT_EQ(available_memory_bytes(dir.file("meminfo"), dir.file("none")), 20000000LL * 1024);
  write(dir.file("v2/memory.max"), "max\n");
  write(dir.file("v2/memory.current"), "1000\n");
  EXPECT_EQ(available_memory_bytes(dir.file("meminfo"), dir.file("v2")), 20000000LL * 1024);
  write(dir.file("v2/memory.max"), "8589934592\n");
  write(dir.file("v2/memory.current"), "1073741824\n");
  EXPECT_EQ(available_memory_bytes(dir.file("meminfo"), dir.file("v2")), 7LL << 30);
  write(dir.file("v1/memory/memory.limit_in_bytes"), "4294967296\n");
  write(dir.file("v1/memory/memory.usage_in_bytes"), "0\n");
  EXPECT_EQ(available_memory_bytes(dir.file("meminfo"), dir.file("v1")), 4LL << 30);
  // This machine's figure is positive and below its RAM.
  const int64_t here = available_memory_bytes();
  EXPECT_GT(here, 0);
}

TrainConfig gpt2_config(int stage, DType precision) {
  TrainConfig c;
  c.model = models::gpt_preset("gpt2-1.5B");
  c.precision = precision;
  c.micro_batch_size = 1;
  c.seq_len = 1024;
  c.zero.stage = stage;
  return c;
}

TEST(Preflight, TheNeedIsThePlanAndOffloadShrinksTheOptimizer) {
  const TrainConfig c = gpt2_config(1, DType::BF16);
  const ParamRegistry registry = models::build_gpt_registry(c.model);
  const int64_t n = registry.numel();
  const MemoryNeed need = plan_rank_memory(c, registry, 1, 1);
  EXPECT_EQ(need.params, 2 * n);
  EXPECT_EQ(need.grads, 2 * n);
  EXPECT_EQ(need.optimizer, 12 * n);
  EXPECT_EQ(need.activations,
            models::GPT<float>::activation_bytes_for(c.model, 1, 1024, DType::BF16));
  TrainConfig offloaded = c;
  offloaded.zero.offload_optimizer.device = memory::OffloadDevice::Nvme;
  offloaded.zero.offload_optimizer.buffer_count = 9;
  offloaded.zero.sub_group_size = 100'000'000;
  const MemoryNeed small = plan_rank_memory(offloaded, registry, 1, 1);
  // Three sub-groups of 1e8 elements in memory, each state's segment 4 KiB aligned; a
  // one-rank shard is padded.
  EXPECT_EQ(small.optimizer,
            memory::offload::io_storage_bytes(9 * memory::offload::round_up_io(400'000'000LL)));
  EXPECT_GE(small.params, 2 * n);
}

TEST(Preflight, ARunThatCannotFitIsRefusedWithTheLeversThatWould) {
  const TrainConfig c = gpt2_config(1, DType::BF16);
  const ParamRegistry registry = models::build_gpt_registry(c.model);
  const int64_t need = plan_rank_memory(c, registry, 1, 1).total();
  EXPECT_NO_THROW(check_memory_fits(c, registry, 1, 1, 1, need));
  // 26.4 GiB against 14: the optimizer on NVMe (12.6 GiB) fits, checkpointing alone (23.5)
  // does not.
  const std::string one = test_util::message_of<InvalidArgument>(
      [&] { check_memory_fits(c, registry, 1, 1, 1, 14LL << 30); });
  EXPECT_TRUE(test_util::OneLine(one));
  EXPECT_TRUE(Contains(one, "memory: this run needs 26.38 GiB per rank")) << one;
  EXPECT_TRUE(Contains(one, "14.00 GiB is available")) << one;
  EXPECT_TRUE(Contains(one, "offload_optimizer nvme")) << one;
  EXPECT_TRUE(test_util::Lacks(one, "activation_checkpointing")) << one;
  // 11 GiB: the parameters on disk too (stage 3: on one rank that is the whole model).
  const std::string params = test_util::message_of<InvalidArgument>(
      [&] { check_memory_fits(c, registry, 1, 1, 1, 11LL << 30); });
  EXPECT_TRUE(Contains(params, "zero_optimization.stage 3 with offload_optimizer and "
                               "offload_param nvme (max_in_cpu 0) would fit")) << params;
  EXPECT_TRUE(test_util::Lacks(params, "activation_checkpointing")) << params;
  // 9 GiB: only everything together.
  const std::string all = test_util::message_of<InvalidArgument>(
      [&] { check_memory_fits(c, registry, 1, 1, 1, 9LL << 30); });
  EXPECT_TRUE(Contains(all, "zero_optimization.stage 3, offload_optimizer nvme with "
                            "sub_group_size 1e8, offload_param nvme and "
                            "activation_checkpointing (full)")) << all;
  EXPECT_TRUE(Contains(one, "TESSERA_SKIP_MEMORY_CHECK")) << one;
  // Two ranks on the machine need twice as much.
  const std::string two = test_util::message_of<InvalidArgument>(
      [&] { check_memory_fits(c, registry, 1, 1, 2, need); });
  EXPECT_TRUE(Contains(two, "x 2 ranks on this machine")) << two;
  // Nothing fits in 1 GiB: the message says what would, without a lever.
  const std::string none = test_util::message_of<InvalidArgument>(
      [&] { check_memory_fits(c, registry, 1, 1, 1, 1LL << 30); });
  EXPECT_TRUE(Contains(none, "more data-parallel ranks")) << none;
}

TEST(Preflight, TheHostTierPlansItsPinnedPoolAndChecksTheLockLimit) {
  TrainConfig c = gpt2_config(1, DType::BF16);
  c.zero.offload_optimizer.device = memory::OffloadDevice::Cpu;
  const ParamRegistry registry = models::build_gpt_registry(c.model);
  const int64_t n = registry.numel();
  const MemoryNeed need = plan_rank_memory(c, registry, 1, 1);
  // fp32 states, the gradients' host copy, two staging buffers of 4Mi elements (bf16).
  const int64_t shard = memory::shard_range(n, 0, 1).numel();
  EXPECT_EQ(need.pinned, shard * (12 + 2) + 2 * (4 << 20) * 2);
  EXPECT_EQ(need.optimizer, 12 * shard);
  EXPECT_EQ(need.grads, 2 * shard + 2 * shard);  // the device's and the host copy
  // Without pin_memory, or without a limit, nothing to check.
  EXPECT_NO_THROW(check_pinned_fits(c, registry, 1, 1, 1 << 20));
  c.zero.offload_optimizer.pin_memory = true;
  EXPECT_NO_THROW(check_pinned_fits(c, registry, 1, 2, -1));
  EXPECT_NO_THROW(check_pinned_fits(c, registry, 1, 1, need.pinned));
  const std::string two = test_util::message_of<InvalidArgument>(
      [&] { check_pinned_fits(c, registry, 1, 2, need.pinned); });
  EXPECT_TRUE(test_util::OneLine(two));
  EXPECT_TRUE(Contains(two, "pinned memory: offload_optimizer.pin_memory locks")) << two;
  EXPECT_TRUE(Contains(two, "x 2 ranks in this process")) << two;
  EXPECT_TRUE(Contains(two, "ulimit -l")) << two;
  EXPECT_TRUE(Contains(two, "pin_memory false")) << two;
}

TEST(Preflight, TheLockLimitIsTheRlimitUnlessCapIpcLock) {
  ScratchDir dir;
  const std::string with_cap = dir.file("with_cap"), without = dir.file("without");
  write(with_cap, "Name:\ttessera\nCapEff:\t000001ffffffffff\n");
  write(without, "Name:\ttessera\nCapEff:\t0000000000000000\n");
  EXPECT_EQ(lockable_memory_bytes(with_cap), -1);
  rlimit limit{};
  ASSERT_EQ(getrlimit(RLIMIT_MEMLOCK, &limit), 0);
  const int64_t expected =
      limit.rlim_cur == RLIM_INFINITY ? -1 : static_cast<int64_t>(limit.rlim_cur);
  EXPECT_EQ(lockable_memory_bytes(without), expected);
}

TEST(Preflight, SwapFilesMustFitInTheFreeSpaceOfTheirPaths) {
  TrainConfig c = gpt2_config(3, DType::BF16);
  c.zero.sub_group_size = 100'000'000;
  c.zero.offload_optimizer.device = memory::OffloadDevice::Nvme;
  c.zero.offload_optimizer.nvme_path = "/opt_disk";
  c.zero.offload_optimizer.buffer_count = 9;
  const ParamRegistry registry = models::build_gpt_registry(c.model);
  memory::ZeroOptions z = c.zero.options();
  z.dtype = c.precision;
  const int64_t optimizer = memory::plan_model_state(registry, z, 0, 1).disk;
  ASSERT_GT(optimizer, int64_t{12} * registry.numel());
  std::map<std::string, int64_t> free = {{"/opt_disk", optimizer}, {"/param_disk", 0}};
  const auto free_at = [&](const std::string& path) { return free.at(path); };
  const auto apart = [](const std::string&, const std::string&) { return false; };
  EXPECT_NO_THROW(check_disk_fits(c, registry, 1, 1, free_at, apart));
  const std::string two = test_util::message_of<InvalidArgument>(
      [&] { check_disk_fits(c, registry, 1, 2, free_at, apart); });
  EXPECT_TRUE(test_util::OneLine(two));
  EXPECT_TRUE(Contains(two, "disk: the optimizer's swap file needs")) << two;
  EXPECT_TRUE(Contains(two, "x 2 ranks on this machine")) << two;
  EXPECT_TRUE(Contains(two, "in '/opt_disk'")) << two;
  // The parameters on another disk are checked against that disk's space...
  free["/opt_disk"] = optimizer + (int64_t{1} << 30);  // room for the optimizer alone
  c.zero.offload_param.device = memory::OffloadDevice::Nvme;
  c.zero.offload_param.nvme_path = "/param_disk";
  c.zero.offload_param.max_in_cpu = 0;
  const std::string params = test_util::message_of<InvalidArgument>(
      [&] { check_disk_fits(c, registry, 1, 1, free_at, apart); });
  EXPECT_TRUE(Contains(params, "disk: the parameters' swap file needs")) << params;
  EXPECT_TRUE(Contains(params, "in '/param_disk' and it has 0 B free")) << params;
  // ... and on the optimizer's disk both count against it.
  c.zero.offload_param.nvme_path = "/opt_disk";
  const std::string both = test_util::message_of<InvalidArgument>(
      [&] { check_disk_fits(c, registry, 1, 1, free_at, apart); });
  EXPECT_TRUE(Contains(both, "the optimizer's and the parameters' swap files need")) << both;
  // A path that cannot be read is left to the swap file's creation, which names it.
  free["/opt_disk"] = -1;
  EXPECT_NO_THROW(check_disk_fits(c, registry, 1, 1, free_at, apart));
  EXPECT_EQ(free_disk_bytes("/no/such/path"), -1);
  EXPECT_GT(free_disk_bytes("/"), 0);
}

TEST(Preflight, TheTrainerRefusesBeforeAllocating) {
  // gpt2-1.5B in fp32 at stage 0 on one rank: 25 GB of model state, more than these machines
  // have; refused at once with the plan's numbers instead of being OOM-killed.
  TrainConfig c = gpt2_config(0, DType::F32);
  c.train_files = {test_util::synthetic_token_file("preflight_tokens.bin")};
  c.gradient_accumulation_steps = 1;
  c.output_dir = (fs::path(testing::TempDir()) / "tessera_preflight").string();
  if (available_memory_bytes() > (64LL << 30)) GTEST_SKIP() << "this machine could hold it";
  const std::string e = test_util::message_of<InvalidArgument>([&] { Trainer t(c); });
  EXPECT_TRUE(Contains(e, "memory: this run needs")) << e;
}

}  // namespace
}  // namespace tessera::engine
