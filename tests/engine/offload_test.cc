// Optimizer offload (zero_optimization.offload_optimizer) on thread ranks:
// - with the fp32 states on disk (device nvme; sub-groups of ~5000 elements, so a dozen per
//   shard, with and without read-ahead and write-behind) the losses and gradient norms are
//   bit for bit those of the same layout with the states in memory, for one rank and DP 2 / 4
//   at ZeRO stages 1-3, in f32, bf16 and fp16 (through an overflow that skips a step), and
//   with tensor parallelism;
// - the states in memory are then only the sub-group buffers, the disk holds the rest, and
//   no swap file is ever visible in nvme_path;
// - a checkpoint saved with the states on disk resumes bit for bit with them in memory and
//   the other way round;
// - faults: a missing or unwritable nvme_path fails every rank at start with the path named;
//   an I/O error injected mid-step stops every rank with that error.
// Parameter offload (zero_optimization.offload_param nvme, stage 3), the same way:
// - with the working parameters on disk (all of them, or all but a max_in_cpu prefix), alone
//   or with the optimizer states on disk too, losses and gradient norms are bit for bit those
//   of stage 3 with everything in memory, on one, two and four ranks, f32, bf16 and fp16;
// - the memory and disk they take are the plan's; checkpoints move between disk and memory
//   exactly; a buffer_size below the largest layer piece is refused at start, an I/O error
//   in a parameter read stops every rank.
#include <gtest/gtest.h>

#include <filesystem>
#include <mutex>

#include "engine_test_util.h"
#include "memory/offload/async_io.h"
#include "memory/offload/host_tier.h"
#include "memory/zero/zero_plan.h"
#include "parallel/comm/thread_group.h"
#include "runtime/core/memcpy_copy_engine.h"
#include "runtime/engine/trainer.h"

namespace tessera::engine {
namespace {

namespace fs = std::filesystem;
using test_util::Contains;
using test_util::ScratchDir;

constexpr int kSteps = 5;

TrainConfig offload_config(int stage, DType precision, int accumulation) {
  TrainConfig c;
  c.model = models::gpt_preset("nano");
  c.precision = precision;
  c.micro_batch_size = 2;
  c.gradient_accumulation_steps = accumulation;
  c.gradient_clipping = 0.5;
  c.optimizer.lr = 3e-3f;
  c.seq_len = 32;
  c.steps = kSteps;
  c.threads = 1;
  c.zero.stage = stage;
  c.zero.reduce_bucket_size = 4000;
  c.zero.stage3_param_persistence_threshold = 100;
  c.zero.stage3_prefetch_bucket_size = 12704;
  c.zero.sub_group_size = 5000;
  c.train_files = {test_util::synthetic_token_file("offload_tokens.bin")};
  c.output_dir = (fs::path(testing::TempDir()) / "tessera_offload_run").string();
  return c;
}

void on_nvme(TrainConfig& c, const std::string& dir, int buffers, bool pipeline) {
  memory::OffloadOptimizerOptions& o = c.zero.offload_optimizer;
  o.device = memory::OffloadDevice::Nvme;
  o.nvme_path = dir;
  o.buffer_count = buffers;
  o.pipeline_read = o.pipeline_write = pipeline;
  c.zero.aio.block_size = 64 << 10;
}

struct Trace {
  std::vector<double> losses, norms;
  int64_t optimizer_buffer_bytes = 0, disk_bytes = 0, shard_elems = 0;
  int64_t param_memory_bytes = 0, param_disk_bytes = 0, planned_params = 0, planned_disk = 0;
  bool swap_file_visible = false;
  // The host tier (offload_optimizer cpu): the last step's copies and the page-locked bytes.
  int grad_copies = -1, late_grad_copies = -1, param_copies = -1;
  int64_t pinned_bytes = 0, planned_pinned = 0;
};

// fp16: an overflow at step 2 is skipped on every rank.
Trainer::GradientHook overflow_at_step_2(DType precision) {
  if (precision != DType::F16) return {};
  return [](int64_t step, const memory::OptimizerShard& shard) {
    if (step == 2 && shard.range.numel() > 0) static_cast<uint16_t*>(shard.grads)[0] = 0x7c00;
  };
}

Trace train(const TrainConfig& c, int world, int from_step = 0, bool save_at_end = false) {
  Trace trace;
  std::mutex m;
  auto body = [&](parallel::ProcessGroup* group) {
    Trainer t(c, group);
    t.set_gradient_hook(overflow_at_step_2(c.precision));
    Trace mine;
    while (t.steps_done() < c.steps) {
      const StepStats s = t.step();
      mine.losses.push_back(s.loss);
      mine.norms.push_back(s.grad_norm);
      if (c.zero.offload_optimizer.device == memory::OffloadDevice::Nvme) {
        mine.swap_file_visible |= !fs::is_empty(c.zero.offload_optimizer.nvme_path);
      }
      if (c.zero.offload_param.device == memory::OffloadDevice::Nvme) {
        mine.swap_file_visible |= !fs::is_empty(c.zero.offload_param.nvme_path);
      }
      if (save_at_end && s.step == from_step) t.save_checkpoint();
    }
    if (t.checkpointer() != nullptr) t.checkpointer()->flush();
    if (t.sharded() != nullptr && t.sharded()->shard().host_tier != nullptr) {
      const memory::HostTier& host = *t.sharded()->shard().host_tier;
      mine.grad_copies = host.pass_stats().grad_copies;
      mine.late_grad_copies = host.pass_stats().late_grad_copies;
      mine.param_copies = host.pass_stats().param_copies;
      mine.pinned_bytes = host.pinned_bytes();
      memory::ZeroOptions options = c.zero.options();
      options.dtype = c.precision;
      mine.planned_pinned =
          memory::plan_model_state(t.model().registry(), options, t.dp_rank(), t.dp_size()).pinned;
    }
    if (t.sharded() != nullptr) {
      const memory::StateStore& states = *t.sharded()->shard().states;
      mine.optimizer_buffer_bytes = states.buffer_bytes();
      mine.disk_bytes = states.disk_bytes();
      mine.shard_elems = states.numel();
      if (const memory::NvmeParamStore* params = t.sharded()->shard().param_store) {
        mine.param_memory_bytes = params->memory_bytes();
        mine.param_disk_bytes = params->disk_bytes();
        memory::ZeroOptions options = c.zero.options();
        options.dtype = c.precision;
        const memory::ModelStateBytes plan =
            memory::plan_model_state(t.model().registry(), options, t.dp_rank(), t.dp_size());
        mine.planned_params = plan.params - plan.fixed.persistent_param_bytes;
        mine.planned_disk = plan.disk;
      }
    }
    if (t.world_rank() == 0) {
      std::lock_guard<std::mutex> lock(m);
      trace = mine;
    }
  };
  if (world == 1) {
    body(nullptr);
  } else {
    parallel::spawn_ranks(world, [&](parallel::ProcessGroup& g) { body(&g); });
  }
  return trace;
}

// Every step's loss and gradient norm bit for bit, and a run that learns.
void expect_the_same_training(const Trace& got, const Trace& want) {
  ASSERT_EQ(got.losses.size(), static_cast<size_t>(kSteps));
  EXPECT_EQ(got.losses, want.losses);
  EXPECT_EQ(got.norms, want.norms);
  EXPECT_LT(got.losses.back(), got.losses.front());
}

struct Case {
  std::string name;
  int world, stage;
  DType precision;
  int tp = 1;
  int buffers = 9;
  bool pipeline = true;
};

class OptimizerOnDisk : public testing::TestWithParam<Case> {};

TEST_P(OptimizerOnDisk, GivesTheBitsOfTheStatesInMemory) {
  const Case p = GetParam();
  ScratchDir dir;
  const int dp = p.world / p.tp;
  TrainConfig in_memory = offload_config(p.stage, p.precision, 4 / dp);
  in_memory.tensor_parallel = p.tp;
  // One rank needs the offloaded layout for its shard: "cpu" keeps the states in memory, as
  // they are on the CPU backend anyway, and is otherwise the same run.
  if (dp == 1) in_memory.zero.offload_optimizer.device = memory::OffloadDevice::Cpu;
  TrainConfig on_disk = in_memory;
  on_nvme(on_disk, dir.path().string(), p.buffers, p.pipeline);
  const Trace want = train(in_memory, p.world);
  const Trace got = train(on_disk, p.world);
  expect_the_same_training(got, want);
  EXPECT_FALSE(got.swap_file_visible);
  // In memory only the sub-group buffers (sub-groups of 5000 elements, 20 KiB a state, one
  // allocation of at least 2 MiB); the shard's states are on disk.
  const int states = p.precision == DType::F32 ? 2 : 3;
  const int64_t segment = (5000 * 4 + 4095) / 4096 * 4096;
  const int64_t groups = (got.shard_elems + 4999) / 5000;
  EXPECT_GE(groups, 2);
  EXPECT_EQ(got.disk_bytes, groups * states * segment);
  EXPECT_EQ(got.optimizer_buffer_bytes,
            memory::offload::io_storage_bytes(std::min<int64_t>(p.buffers / states, groups) *
                                              states * segment));
  EXPECT_EQ(want.disk_bytes, 0);
}

INSTANTIATE_TEST_SUITE_P(
    ThreadRanks, OptimizerOnDisk,
    testing::Values(Case{"one_rank_stage1_f32", 1, 1, DType::F32},
                    Case{"one_rank_stage3_bf16", 1, 3, DType::BF16},
                    Case{"one_rank_stage2_bf16_one_buffer", 1, 2, DType::BF16, 1, 3, false},
                    Case{"dp2_stage1_bf16", 2, 1, DType::BF16},
                    Case{"dp2_stage2_f32_read_ahead_only", 2, 2, DType::F32, 1, 4, true},
                    Case{"dp2_stage3_f32", 2, 3, DType::F32},
                    Case{"dp2_stage2_fp16", 2, 2, DType::F16},
                    Case{"dp4_stage3_bf16", 4, 3, DType::BF16},
                    Case{"tp2_dp2_stage1_f32", 4, 1, DType::F32, 2}),
    [](const testing::TestParamInfo<Case>& info) { return info.param.name; });

// The host tier (offload_optimizer cpu) on the CPU backend: the device is host memory and
// the copies are the memcpy twin's, on threads of their own, so the whole ZeRO-Offload
// pipeline runs: bit for bit the run with the states beside the parameters (one rank: the
// states on disk, shown above to be that run), each bucket's gradients copied as its
// reduction lands (none left for the optimizer to fetch), except under pipeline parallelism,
// where the tied embedding's sum comes after the reduction and everything is copied late.
struct HostCase {
  std::string name;
  int world, stage;
  DType precision;
  int tp = 1, pp = 1;
};

class OptimizerOnHost : public testing::TestWithParam<HostCase> {};

TEST_P(OptimizerOnHost, GivesTheBitsOfTheStatesBesideTheParameters) {
  const HostCase p = GetParam();
  ScratchDir dir;
  const int dp = p.world / (p.tp * p.pp);
  TrainConfig beside = offload_config(p.stage, p.precision, 4 / dp);
  beside.tensor_parallel = p.tp;
  beside.pipeline_parallel = p.pp;
  TrainConfig on_host = beside;
  on_host.zero.offload_optimizer.device = memory::OffloadDevice::Cpu;
  if (dp == 1) on_nvme(beside, dir.path().string(), 9, true);
  const Trace want = train(beside, p.world);
  const Trace got = train(on_host, p.world);
  expect_the_same_training(got, want);
  // Sub-groups of 5000 elements, each written back once per step.
  EXPECT_EQ(got.param_copies, (got.shard_elems + 4999) / 5000);
  // fp16 runs a gradient hook (the overflow at step 2), after which everything is copied.
  if (p.pp == 1 && p.precision != DType::F16) {
    EXPECT_GT(got.grad_copies, 0);
    EXPECT_EQ(got.late_grad_copies, 0) << "a bucket's gradients were not copied as it landed";
  } else {
    EXPECT_GE(got.late_grad_copies, 1);
  }
  EXPECT_GT(got.pinned_bytes, 0);
  EXPECT_EQ(got.pinned_bytes, got.planned_pinned);
}

INSTANTIATE_TEST_SUITE_P(
    ThreadRanks, OptimizerOnHost,
    testing::Values(HostCase{"one_rank_stage1_f32", 1, 1, DType::F32},
                    HostCase{"one_rank_stage3_bf16", 1, 3, DType::BF16},
                    HostCase{"dp2_stage1_bf16", 2, 1, DType::BF16},
                    HostCase{"dp2_stage2_f32", 2, 2, DType::F32},
                    HostCase{"dp2_stage2_fp16", 2, 2, DType::F16},
                    HostCase{"dp2_stage3_bf16", 2, 3, DType::BF16},
                    HostCase{"dp4_stage3_f32", 4, 3, DType::F32},
                    HostCase{"tp2_dp2_stage1_bf16", 4, 1, DType::BF16, 2},
                    HostCase{"pp2_dp2_stage2_bf16", 4, 2, DType::BF16, 1, 2}),
    [](const testing::TestParamInfo<HostCase>& info) { return info.param.name; });

TEST(OptimizerOnDisk, OneRankMatchesStageZero) {
  ScratchDir dir;
  const TrainConfig plain = offload_config(0, DType::F32, 4);
  TrainConfig on_disk = offload_config(1, DType::F32, 4);
  on_nvme(on_disk, dir.path().string(), 6, true);
  const Trace want = train(plain, 1);
  const Trace got = train(on_disk, 1);
  ASSERT_EQ(got.losses.size(), want.losses.size());
  for (size_t s = 0; s < want.losses.size(); ++s) {
    EXPECT_NEAR(got.losses[s], want.losses[s], 1e-6 * std::abs(want.losses[s])) << "step " << s;
  }
}

// Two thread ranks: a checkpoint saved at step 3 by one run resumes in the other, both ways,
// and the resumed steps are bit for bit those of the uninterrupted memory run.
void expect_checkpoints_cross(const TrainConfig& memory_run, const TrainConfig& disk_run,
                              const ScratchDir& dir) {
  const Trace whole = train(memory_run, 2);
  for (const bool save_on_disk : {true, false}) {
    const std::string root = dir.file(save_on_disk ? "from_disk" : "from_memory");
    TrainConfig saving = save_on_disk ? disk_run : memory_run;
    saving.checkpoint.dir = root;
    saving.steps = 3;
    const Trace first = train(saving, 2, 3, /*save_at_end=*/true);
    TrainConfig resuming = save_on_disk ? memory_run : disk_run;
    resuming.checkpoint.dir = root;
    resuming.checkpoint.resume = "latest";
    const Trace rest = train(resuming, 2);
    ASSERT_EQ(rest.losses.size(), static_cast<size_t>(kSteps - 3));
    for (int s = 3; s < kSteps; ++s) {
      EXPECT_EQ(rest.losses[s - 3], whole.losses[s])
          << (save_on_disk ? "disk" : "memory") << " step " << s + 1;
      EXPECT_EQ(rest.norms[s - 3], whole.norms[s]);
    }
    EXPECT_EQ(first.losses, std::vector<double>(whole.losses.begin(), whole.losses.begin() + 3));
  }
}

TEST(OptimizerOnDisk, CheckpointsMoveBetweenDiskAndMemoryExactly) {
  ScratchDir dir;
  fs::create_directories(dir.file("swap"));
  TrainConfig memory_run = offload_config(2, DType::BF16, 2);
  TrainConfig disk_run = memory_run;
  on_nvme(disk_run, dir.file("swap"), 9, true);
  expect_checkpoints_cross(memory_run, disk_run, dir);
}

std::string run_error(const TrainConfig& c, int world) {
  try {
    train(c, world);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(OptimizerOnDisk, AMissingOrUnwritablePathFailsEveryRankAtStart) {
  ScratchDir dir;
  TrainConfig c = offload_config(2, DType::F32, 2);
  on_nvme(c, dir.file("no_such_folder"), 6, true);
  const std::string missing = run_error(c, 2);
  EXPECT_TRUE(Contains(missing, "no_such_folder")) << missing;
  EXPECT_TRUE(Contains(missing, "does not exist")) << missing;
  test_util::write_bytes(dir.file("a_file"), "x");
  on_nvme(c, dir.file("a_file"), 6, true);
  const std::string not_dir = run_error(c, 2);
  EXPECT_TRUE(Contains(not_dir, "a_file")) << not_dir;
}

// Two thread ranks: after one clean step, rank 0's swap file fails its `after`th I/O
// request (or, with MemcpyCopyEngine's injector, the host tier its `after`th copy). Every rank must stop with an error (none is left waiting in a collective);
// returns the message of the rank that saw the I/O error.
using Injector = void (*)(int64_t);

std::string io_error_mid_run(const TrainConfig& c, int after,
                             Injector inject = memory::offload::inject_io_error_after) {
  std::atomic<int> failed{0};
  std::string message;
  std::mutex m;
  try {
    parallel::spawn_ranks(2, [&](parallel::ProcessGroup& g) {
      try {
        Trainer t(c, &g);
        t.step();
        g.barrier()->wait();
        if (g.rank() == 0) inject(after);
        g.barrier()->wait();
        for (int i = 0; i < 3; ++i) t.step();
      } catch (const Error& e) {
        ++failed;
        std::lock_guard<std::mutex> lock(m);
        if (message.empty() || Contains(e.what(), "Input/output error")) message = e.what();
        throw;
      }
    });
    ADD_FAILURE() << "the run went on through an I/O error";
  } catch (const Error& e) {
    EXPECT_TRUE(Contains(e.what(), "Input/output error")) << e.what();
  }
  inject(0);
  EXPECT_EQ(failed.load(), 2);  // the other rank too, not left waiting
  return message;
}

TEST(OptimizerOnDisk, AnIoErrorMidStepStopsEveryRank) {
  ScratchDir dir;
  TrainConfig c = offload_config(1, DType::BF16, 2);
  on_nvme(c, dir.path().string(), 9, true);
  const std::string message = io_error_mid_run(c, 7);
  EXPECT_TRUE(Contains(message, "swap file")) << message;
}

TEST(OptimizerOnHost, AFailedCopyMidStepStopsEveryRank) {
  TrainConfig c = offload_config(2, DType::BF16, 2);
  c.zero.offload_optimizer.device = memory::OffloadDevice::Cpu;
  const std::string message = io_error_mid_run(c, 3, MemcpyCopyEngine::inject_copy_failure_after);
  EXPECT_TRUE(Contains(message, "copy of")) << message;
}

void params_on_nvme(TrainConfig& c, const std::string& dir, int64_t max_in_cpu, int buffers) {
  memory::OffloadParamOptions& o = c.zero.offload_param;
  o.device = memory::OffloadDevice::Nvme;
  o.nvme_path = dir;
  o.max_in_cpu = max_in_cpu;
  o.buffer_count = buffers;
  o.buffer_size = 1'000'000;
  c.zero.aio.block_size = 64 << 10;
}

struct ParamCase {
  std::string name;
  int world;
  DType precision;
  int64_t max_in_cpu = 0;  // elements of the shard kept in memory
  bool optimizer_on_disk = false;
  int buffers = 5;
};

class ParamsOnDisk : public testing::TestWithParam<ParamCase> {};

TEST_P(ParamsOnDisk, GiveTheBitsOfStage3InMemory) {
  const ParamCase p = GetParam();
  ScratchDir dir;
  fs::create_directories(dir.file("params"));
  fs::create_directories(dir.file("optimizer"));
  TrainConfig in_memory = offload_config(3, p.precision, 4 / p.world);
  // One rank needs the partitioned layout for its shard, as parameter offload has.
  if (p.world == 1) in_memory.zero.offload_optimizer.device = memory::OffloadDevice::Cpu;
  TrainConfig on_disk = in_memory;
  params_on_nvme(on_disk, dir.file("params"), p.max_in_cpu, p.buffers);
  if (p.optimizer_on_disk) on_nvme(on_disk, dir.file("optimizer"), 9, true);
  const Trace want = train(in_memory, p.world);
  const Trace got = train(on_disk, p.world);
  expect_the_same_training(got, want);
  EXPECT_FALSE(got.swap_file_visible);
  // The store's memory and file are the plan's, and the file holds what is not resident.
  EXPECT_EQ(got.param_memory_bytes, got.planned_params);
  const int64_t elem = static_cast<int64_t>(dtype_size(p.precision));
  const int64_t resident = std::min(p.max_in_cpu / 2048 * 2048, got.shard_elems);
  EXPECT_EQ(got.param_disk_bytes,
            std::max<int64_t>((got.shard_elems - resident + 2047) / 2048 * 2048 * elem, 4096));
  EXPECT_EQ(got.planned_disk, got.param_disk_bytes + (p.optimizer_on_disk ? got.disk_bytes : 0));
}

INSTANTIATE_TEST_SUITE_P(
    ThreadRanks, ParamsOnDisk,
    testing::Values(ParamCase{"one_rank_bf16_all_on_disk", 1, DType::BF16},
                    ParamCase{"one_rank_bf16_with_optimizer", 1, DType::BF16, 0, true},
                    ParamCase{"one_rank_bf16_half_in_memory", 1, DType::BF16, 60'000},
                    ParamCase{"one_rank_f32_two_buffers", 1, DType::F32, 0, false, 2},
                    ParamCase{"dp2_bf16_part_in_memory", 2, DType::BF16, 20'000},
                    ParamCase{"dp2_fp16_with_optimizer", 2, DType::F16, 0, true},
                    ParamCase{"dp2_f32_two_buffers", 2, DType::F32, 0, false, 2},
                    ParamCase{"dp4_bf16_with_optimizer", 4, DType::BF16, 8'192, true}),
    [](const testing::TestParamInfo<ParamCase>& info) { return info.param.name; });

TEST(ParamsOnDisk, CheckpointsMoveBetweenDiskAndMemoryExactly) {
  ScratchDir dir;
  fs::create_directories(dir.file("swap"));
  TrainConfig memory_run = offload_config(3, DType::BF16, 2);
  TrainConfig disk_run = memory_run;
  params_on_nvme(disk_run, dir.file("swap"), 10'000, 5);
  expect_checkpoints_cross(memory_run, disk_run, dir);
}

TEST(ParamsOnDisk, ABufferBelowTheLargestLayerIsRefusedAtStart) {
  ScratchDir dir;
  TrainConfig c = offload_config(3, DType::BF16, 2);
  params_on_nvme(c, dir.path().string(), 0, 5);
  c.zero.offload_param.buffer_size = 1000;
  const std::string e = run_error(c, 2);
  EXPECT_TRUE(Contains(e, "offload_param.buffer_size 1000 is below")) << e;
  EXPECT_TRUE(Contains(e, "raise buffer_size to at least")) << e;
  params_on_nvme(c, dir.file("no_such_folder"), 0, 5);
  const std::string missing = run_error(c, 2);
  EXPECT_TRUE(Contains(missing, "no_such_folder")) << missing;
}

TEST(ParamsOnDisk, AnIoErrorInAParameterReadStopsEveryRank) {
  ScratchDir dir;
  TrainConfig c = offload_config(3, DType::BF16, 2);
  params_on_nvme(c, dir.path().string(), 0, 5);
  const std::string message = io_error_mid_run(c, 5);
  EXPECT_TRUE(Contains(message, "swap file")) << message;
}

}  // namespace
}  // namespace tessera::engine
