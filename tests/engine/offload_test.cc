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
#include <gtest/gtest.h>

#include <filesystem>
#include <mutex>

#include "engine_test_util.h"
#include "memory/offload/async_io.h"
#include "parallel/comm/thread_group.h"
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
  bool swap_file_visible = false;
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
      if (save_at_end && s.step == from_step) t.save_checkpoint();
    }
    if (t.checkpointer() != nullptr) t.checkpointer()->flush();
    if (t.sharded() != nullptr) {
      const memory::StateStore& states = *t.sharded()->shard().states;
      mine.optimizer_buffer_bytes = states.buffer_bytes();
      mine.disk_bytes = states.disk_bytes();
      mine.shard_elems = states.numel();
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
  ASSERT_EQ(got.losses.size(), static_cast<size_t>(kSteps));
  EXPECT_EQ(got.losses, want.losses);
  EXPECT_EQ(got.norms, want.norms);
  EXPECT_LT(got.losses.back(), got.losses.front());
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

TEST(OptimizerOnDisk, CheckpointsMoveBetweenDiskAndMemoryExactly) {
  ScratchDir dir;
  fs::create_directories(dir.file("swap"));
  TrainConfig memory_run = offload_config(2, DType::BF16, 2);
  TrainConfig disk_run = memory_run;
  on_nvme(disk_run, dir.file("swap"), 9, true);
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
      EXPECT_EQ(rest.losses[s - 3], whole.losses[s]) << (save_on_disk ? "disk" : "memory")
                                                     << " step " << s + 1;
      EXPECT_EQ(rest.norms[s - 3], whole.norms[s]);
    }
    EXPECT_EQ(first.losses, std::vector<double>(whole.losses.begin(), whole.losses.begin() + 3));
  }
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

TEST(OptimizerOnDisk, AnIoErrorMidStepStopsEveryRank) {
  ScratchDir dir;
  TrainConfig c = offload_config(1, DType::BF16, 2);
  on_nvme(c, dir.path().string(), 9, true);
  std::atomic<int> failed{0};
  std::string message;
  std::mutex m;
  try {
    parallel::spawn_ranks(2, [&](parallel::ProcessGroup& g) {
      try {
        Trainer t(c, &g);
        t.step();
        g.barrier()->wait();
        if (g.rank() == 0) memory::offload::inject_io_error_after(7);
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
  memory::offload::inject_io_error_after(0);
  EXPECT_EQ(failed.load(), 2);  // the other rank too, not left waiting
  EXPECT_TRUE(Contains(message, "swap file")) << message;
}

}  // namespace
}  // namespace tessera::engine
