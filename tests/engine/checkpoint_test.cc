// Training checkpoints on thread ranks:
// - exact resume: a run saved at step 3 and resumed in a new trainer gives the uninterrupted
//   run's losses and gradient norms bit for bit, for one rank, DP at ZeRO stages 0-3, TP (with
//   sequence parallelism), PP (1F1B and interleaved), DP x TP x PP, bf16, fp16 (its loss
//   scaler through an overflow), gradient accumulation, shuffled and sequential data; the
//   saved run itself is not perturbed by saving;
// - resharding: a checkpoint saved at one layout continues at another within 1e-5 relative
//   of the continuation at the original layout, (dp2, tp2, pp2, stage 1) into (dp1, tp4) and
//   back among them; the saved tensors are the one-rank model's, padding left out;
// - async saves, keep_last pruning, SIGTERM (finish the step, save, stop; the resume exact),
//   `--resume latest` on an empty folder;
// - faults: a flipped bit (every rank fails naming the shard), a missing shard, a newer
//   format version, a model or micro-batch that does not match, a fresh run into a folder
//   holding another run's checkpoints.
#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>

#include "engine_test_util.h"
#include "pipeline_parallel_checks.h"
#include "parallel/comm/thread_group.h"
#include "runtime/engine/checkpoint_io.h"
#include "runtime/engine/trainer.h"

namespace tessera::engine {
namespace {

namespace fs = std::filesystem;
using test_util::Contains;
using test_util::ScratchDir;

constexpr int kSteps = 6;
constexpr int kSaveAt = 3;

struct Layout {
  std::string name;
  int world = 1, tp = 1, pp = 1, v = 1, stage = 0;
  bool sp = false;
  DType precision = DType::F32;
  bool shuffle = false;
};

TrainConfig layout_config(const Layout& l, const std::string& checkpoints) {
  // 8 blocks, 4 heads, vocabulary 257 (padded under tensor parallelism), 2 micro-batches.
  TrainConfig c = test_util::pp_config(l.pp, l.v > 1 ? "interleaved" : "1f1b", 2, l.v);
  c.tensor_parallel = l.tp;
  c.sequence_parallel = l.sp;
  c.zero.stage = l.stage;
  c.precision = l.precision;
  c.shuffle = l.shuffle;
  c.steps = kSteps;
  c.train_batch_size = 0;
  c.micro_batch_size = 2;
  // The same global batch at every layout: 4 micro-batches over the data-parallel ranks.
  c.gradient_accumulation_steps = 4 / (l.world / (l.tp * l.pp));
  c.checkpoint.dir = checkpoints;
  c.scheduler.type = "WarmupDecayLR";
  c.scheduler.warmup_num_steps = 2;
  c.scheduler.warmup_type = "linear";
  c.scheduler.warmup_max_lr = 3e-3;
  return c;
}

struct Trace {
  std::vector<double> losses, norms;
};

// Runs `c` on `world` thread ranks from where it starts (its resume point, if any) to step
// `until`, saving at the steps in `save_at`; rank 0's losses and norms of the steps run.
Trace train(const TrainConfig& c, int world, int until, std::vector<int> save_at = {},
            const Trainer::GradientHook& hook = {}) {
  Trace trace;
  std::mutex m;
  auto body = [&](parallel::ProcessGroup* group) {
    Trainer t(c, group);
    if (hook) t.set_gradient_hook(hook);
    Trace mine;
    while (t.steps_done() < until) {
      const StepStats s = t.step();
      mine.losses.push_back(s.loss);
      mine.norms.push_back(s.grad_norm);
      if (std::find(save_at.begin(), save_at.end(), s.step) != save_at.end()) t.save_checkpoint();
    }
    if (t.checkpointer() != nullptr) t.checkpointer()->flush();
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

std::string step_folder(const std::string& root, int step) {
  return (fs::path(root) / checkpoint_folder_name(step)).string();
}

class ExactResume : public testing::TestWithParam<Layout> {};

TEST_P(ExactResume, ResumedRunMatchesTheUninterruptedOneBitForBit) {
  const Layout l = GetParam();
  ScratchDir dir;
  TrainConfig c = layout_config(l, dir.file("ck"));
  // fp16: an overflow at step 2 lowers the scale and skips the step, so the scaler's whole
  // state (scale, hysteresis, iteration of the last overflow) must carry over.
  Trainer::GradientHook hook;
  if (l.precision == DType::F16) {
    c.loss_scaler.hysteresis = 1;
    hook = [](int64_t step, const memory::OptimizerShard& shard) {
      if (step == 2 && shard.range.numel() > 0) {
        static_cast<uint16_t*>(shard.grads)[0] = 0x7c00;  // +inf in f16
      }
    };
  }
  const Trace whole = train(c, l.world, kSteps, {kSaveAt}, hook);
  ASSERT_EQ(whole.losses.size(), static_cast<size_t>(kSteps));
  // Saving does not change the run: the same run without a save gives the same bits.
  TrainConfig unsaved = c;
  unsaved.checkpoint = {};
  const Trace plain = train(unsaved, l.world, kSteps, {}, hook);
  EXPECT_EQ(plain.losses, whole.losses);

  TrainConfig resumed = c;
  resumed.checkpoint.resume = step_folder(c.checkpoint.dir, kSaveAt);
  const Trace rest = train(resumed, l.world, kSteps);
  ASSERT_EQ(rest.losses.size(), static_cast<size_t>(kSteps - kSaveAt));
  for (int s = kSaveAt; s < kSteps; ++s) {
    EXPECT_EQ(rest.losses[s - kSaveAt], whole.losses[s]) << l.name << " step " << s + 1;
    EXPECT_EQ(rest.norms[s - kSaveAt], whole.norms[s]) << l.name << " step " << s + 1;
  }
  EXPECT_LT(whole.losses.back(), whole.losses.front());
  // Every checkpoint verifies, and its manifest records the layout that wrote it.
  CheckpointReader reader(step_folder(c.checkpoint.dir, kSaveAt));
  EXPECT_GT(reader.verify(), 0u);
  const CheckpointLayout& saved = reader.manifest().layout;
  EXPECT_EQ(saved.world, l.world);
  EXPECT_EQ(saved.tp, l.tp);
  EXPECT_EQ(saved.pp, l.pp);
  EXPECT_EQ(saved.virtual_pp, l.v);
  EXPECT_EQ(saved.precision, l.precision);
  EXPECT_EQ(reader.has(TensorKind::Working), l.precision != DType::F32);
  EXPECT_EQ(reader.manifest().progress.step, kSaveAt);
  EXPECT_EQ(reader.manifest().progress.loss_scaler.has_value(), l.precision == DType::F16);
  if (l.precision == DType::F16) {
    // The injected overflow skipped step 2 (at least: the first scale may overflow too).
    EXPECT_LE(reader.manifest().progress.optimizer_steps, kSaveAt - 1);
    EXPECT_GE(reader.manifest().progress.loss_scaler->overflow_count, 1);
  }
}

std::vector<Layout> exact_layouts() {
  return {
      {"one_rank"},
      {"one_rank_shuffled", 1, 1, 1, 1, 0, false, DType::F32, true},
      {"dp2_stage0", 2, 1, 1, 1, 0},
      {"dp2_stage1_shuffled", 2, 1, 1, 1, 1, false, DType::F32, true},
      {"dp2_stage2", 2, 1, 1, 1, 2},
      {"dp2_stage3", 2, 1, 1, 1, 3},
      {"tp2", 2, 2},
      {"tp2_sequence_parallel_dp2_stage1", 4, 2, 1, 1, 1, true},
      {"pp2", 2, 1, 2},
      {"pp2_interleaved", 2, 1, 2, 2},
      {"dp2_tp2_pp2_stage1", 8, 2, 2, 1, 1},
      {"bf16_dp2_stage2", 2, 1, 1, 1, 2, false, DType::BF16},
      {"fp16_one_rank", 1, 1, 1, 1, 0, false, DType::F16},
      {"fp16_dp2_stage1_pp2", 4, 1, 2, 1, 1, false, DType::F16},
  };
}

INSTANTIATE_TEST_SUITE_P(Layouts, ExactResume, testing::ValuesIn(exact_layouts()),
                         [](const auto& info) { return info.param.name; });

// --- resharding ------------------------------------------------------------------------

struct Reshard {
  std::string name;
  Layout from, to;
};

class Resharding : public testing::TestWithParam<Reshard> {};

void expect_close(const std::vector<double>& a, const std::vector<double>& b, double rel,
                  const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(a[i], b[i], rel * std::abs(b[i])) << what << " step " << i;
  }
}

// Saved at `from` at step 3, continued at `to`: the losses of the continuation at `from`
// within 1e-5 relative. Then `to` saves at step 4 and `from` continues from that to the end:
// the way back.
TEST_P(Resharding, ContinuesAtAnotherLayoutWithin1e5Relative) {
  const Reshard r = GetParam();
  ScratchDir dir;
  const TrainConfig from = layout_config(r.from, dir.file("from"));
  const Trace original = train(from, r.from.world, kSteps, {kSaveAt});
  const std::vector<double> tail(original.losses.begin() + kSaveAt, original.losses.end());

  TrainConfig to = layout_config(r.to, dir.file("to"));
  to.checkpoint.resume = step_folder(from.checkpoint.dir, kSaveAt);
  const Trace moved = train(to, r.to.world, kSteps, {kSaveAt + 1});
  expect_close(moved.losses, tail, 1e-5, r.name + " there");

  TrainConfig back = layout_config(r.from, dir.file("back"));
  back.checkpoint.resume = step_folder(to.checkpoint.dir, kSaveAt + 1);
  const Trace returned = train(back, r.from.world, kSteps);
  expect_close(returned.losses, std::vector<double>(tail.begin() + 1, tail.end()), 1e-5,
               r.name + " and back");
}

std::vector<Reshard> reshard_cases() {
  return {
      // The example: (dp2, tp2, pp2, stage 1) into (dp1, tp4, pp1, stage 3).
      {"dp2_tp2_pp2_stage1_to_tp4_stage3", {"", 8, 2, 2, 1, 1}, {"", 4, 4, 1, 1, 3}},
      {"one_rank_to_dp4_stage2", {"", 1}, {"", 4, 1, 1, 1, 2}},
      {"dp2_stage3_to_pp2_interleaved", {"", 2, 1, 1, 1, 3}, {"", 2, 1, 2, 2, 0}},
      {"tp2_sp_to_dp2_stage3", {"", 2, 2, 1, 1, 0, true}, {"", 2, 1, 1, 1, 3}},
      {"pp4_to_dp2_tp2_stage2", {"", 4, 1, 4}, {"", 4, 2, 1, 1, 2}},
  };
}

INSTANTIATE_TEST_SUITE_P(Layouts, Resharding, testing::ValuesIn(reshard_cases()),
                         [](const auto& info) { return info.param.name; });

// The saved tensors are the one-rank model's whole weights: a tensor-parallel, pipelined,
// sharded save read back tensor by tensor gives whole_weights() bit for bit, and its word
// embedding holds the 257 real rows, not the padded vocabulary.
TEST(Checkpoint, SavedTensorsAreTheOneRankModelWithoutPadding) {
  ScratchDir dir;
  const Layout l{"", 8, 2, 2, 1, 2};
  const TrainConfig c = layout_config(l, dir.file("ck"));
  std::vector<float> whole;
  parallel::spawn_ranks(8, [&](parallel::ProcessGroup& g) {
    Trainer t(c, &g);
    t.step();
    t.save_checkpoint();
    std::vector<float> mine = t.full_params();
    if (g.rank() == 0) whole = std::move(mine);
  });
  CheckpointReader reader(step_folder(c.checkpoint.dir, 1));
  const ParamRegistry registry = models::build_gpt_registry(c.model);
  ASSERT_EQ(reader.manifest().tensors.size(), registry.params().size());
  EXPECT_EQ(reader.manifest().tensor("wte.weight").shape, (Shape{257, 32}));
  for (const ParamSpec& p : registry.params()) {
    const std::vector<float> saved = reader.read_tensor(p.name, TensorKind::Master);
    ASSERT_EQ(saved.size(), static_cast<size_t>(p.numel()));
    EXPECT_EQ(0, std::memcmp(saved.data(), whole.data() + p.offset, saved.size() * sizeof(float)))
        << p.name;
  }
  // Each element once: the ranks split the writing between them.
  EXPECT_EQ(reader.manifest().total_bytes(),
            static_cast<uint64_t>(registry.numel()) * 3 * sizeof(float));
}

// --- async saves, pruning, signals ---------------------------------------------------

std::vector<double> metric_losses(const std::string& run_dir) {
  std::vector<double> out;
  std::ifstream in(fs::path(run_dir) / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    out.push_back(nlohmann::json::parse(line)["loss"].get<double>());
  }
  return out;
}

void run_ranks(const TrainConfig& c, int world, std::vector<bool>* completed = nullptr) {
  std::mutex m;
  parallel::spawn_ranks(world, [&](parallel::ProcessGroup& g) {
    Trainer t(c, &g);
    const bool done = t.run();
    std::lock_guard<std::mutex> lock(m);
    if (completed != nullptr) completed->push_back(done);
  });
}

TEST(Checkpoint, AsyncSavesCommitPruneAndResumeExactly) {
  ScratchDir dir;
  TrainConfig c = layout_config({"", 2, 1, 1, 1, 2}, dir.file("ck"));
  c.output_dir = dir.file("run");
  c.checkpoint.save_interval = 2;
  c.checkpoint.async_save = true;
  c.checkpoint.keep_last = 2;
  run_ranks(c, 2);
  // Saved at 2, 4 and 6; the oldest pruned once the newest was committed.
  EXPECT_FALSE(fs::exists(step_folder(c.checkpoint.dir, 2)));
  EXPECT_TRUE(fs::exists(step_folder(c.checkpoint.dir, 4)));
  EXPECT_EQ(resolve_checkpoint(c.checkpoint.dir), step_folder(c.checkpoint.dir, 6));
  EXPECT_GT(CheckpointReader(step_folder(c.checkpoint.dir, 4)).verify(), 0u);
  const std::vector<double> whole = metric_losses(c.output_dir);
  ASSERT_EQ(whole.size(), static_cast<size_t>(kSteps));

  TrainConfig resumed = c;
  resumed.checkpoint.dir = dir.file("ck2");
  resumed.checkpoint.resume = step_folder(c.checkpoint.dir, 4);
  resumed.output_dir = dir.file("run2");
  run_ranks(resumed, 2);
  const std::vector<double> rest = metric_losses(resumed.output_dir);
  ASSERT_EQ(rest.size(), 2u);
  EXPECT_EQ(rest[0], whole[4]);
  EXPECT_EQ(rest[1], whole[5]);
}

// SIGTERM (a preempted job) during step 3: the step finishes, is saved, run() returns false
// on every rank; the resumed run's metrics then read as the uninterrupted run's.
TEST(Checkpoint, SigtermSavesTheStepAndTheResumeIsExact) {
  ScratchDir dir;
  TrainConfig c = layout_config({"", 2, 1, 1, 1, 1}, dir.file("ck"));
  c.output_dir = dir.file("whole");
  TrainConfig plain = c;
  plain.checkpoint = {};
  run_ranks(plain, 2);
  const std::vector<double> whole = metric_losses(plain.output_dir);

  c.output_dir = dir.file("stopped");
  std::vector<bool> completed;
  std::mutex m;
  parallel::spawn_ranks(2, [&](parallel::ProcessGroup& g) {
    Trainer t(c, &g);
    t.set_gradient_hook([&](int64_t step, const memory::OptimizerShard&) {
      if (step == 3 && g.rank() == 1) std::raise(SIGTERM);
    });
    const bool done = t.run();
    std::lock_guard<std::mutex> lock(m);
    completed.push_back(done);
    EXPECT_EQ(t.steps_done(), 3);
  });
  EXPECT_EQ(completed, (std::vector<bool>{false, false}));
  EXPECT_EQ(resolve_checkpoint(c.checkpoint.dir), step_folder(c.checkpoint.dir, 3));
  EXPECT_FALSE(fs::exists(fs::path(c.output_dir) / "model.safetensors"));  // not finished

  c.checkpoint.resume = "latest";
  run_ranks(c, 2, &completed);
  EXPECT_EQ(metric_losses(c.output_dir), whole);  // steps 1-3 kept, 4-6 appended
}

TEST(Checkpoint, ResumeLatestOfAnEmptyFolderStartsFresh) {
  ScratchDir dir;
  TrainConfig c = layout_config({"one"}, dir.file("ck"));
  c.checkpoint.resume = "latest";
  Trainer t(c);
  EXPECT_EQ(t.steps_done(), 0);
  EXPECT_EQ(t.resumed_from(), "");
}

// --- faults ----------------------------------------------------------------------------

class CheckpointFaults : public testing::Test {
 protected:
  void SetUp() override {
    config_ = layout_config({"", 2, 1, 1, 1, 1}, dir_.file("ck"));
    config_.steps = 2;
    train(config_, 2, 1, {1});
    folder_ = step_folder(config_.checkpoint.dir, 1);
  }
  // The message every rank fails with when resuming from the folder.
  std::vector<std::string> resume_errors(TrainConfig c) {
    c.checkpoint.resume = folder_;
    c.checkpoint.dir = dir_.file("other");
    std::vector<std::string> messages(2);
    parallel::spawn_ranks(2, [&](parallel::ProcessGroup& g) {
      try {
        Trainer t(c, &g);
        messages[g.rank()] = "no error";
      } catch (const std::exception& e) {
        messages[g.rank()] = e.what();
      }
    });
    return messages;
  }
  ScratchDir dir_;
  TrainConfig config_;
  std::string folder_;
};

TEST_F(CheckpointFaults, AFlippedBitFailsEveryRankNamingTheShard) {
  const std::string shard = (fs::path(folder_) / "rank-00001.bin").string();
  std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(100);
  char byte = 0;
  f.read(&byte, 1);
  byte ^= 0x10;
  f.seekp(100);
  f.write(&byte, 1);
  f.close();
  for (const std::string& msg : resume_errors(config_)) {
    EXPECT_TRUE(Contains(msg, "rank-00001.bin"));
    EXPECT_TRUE(Contains(msg, "corrupt"));
    EXPECT_TRUE(test_util::OneLine(msg));
  }
  CheckpointReader reader(folder_);
  EXPECT_TRUE(Contains(test_util::message_of<Error>([&] { reader.verify(); }), "rank-00001.bin"));
}

TEST_F(CheckpointFaults, AMissingShardANewerVersionAndAnotherModelAreOneLineErrors) {
  fs::rename(fs::path(folder_) / "rank-00001.bin", fs::path(folder_) / "moved.bin");
  for (const std::string& msg : resume_errors(config_)) {
    EXPECT_TRUE(Contains(msg, "shard file 'rank-00001.bin' is missing"));
  }
  fs::rename(fs::path(folder_) / "moved.bin", fs::path(folder_) / "rank-00001.bin");

  TrainConfig other = config_;
  other.model.n_layer = 4;
  for (const std::string& msg : resume_errors(other)) {
    EXPECT_TRUE(Contains(msg, "holds a model of 8 layers"));
  }
  other = config_;
  other.micro_batch_size = 1;
  other.gradient_accumulation_steps = 4;
  for (const std::string& msg : resume_errors(other)) {
    EXPECT_TRUE(Contains(msg, "micro-batches of 2 x 32 tokens"));
  }

  const std::string manifest = (fs::path(folder_) / kManifestFile).string();
  auto j = nlohmann::json::parse(test_util::read_bytes(manifest));
  j["version"] = kCheckpointFormatVersion + 1;
  test_util::write_bytes(manifest, j.dump());
  for (const std::string& msg : resume_errors(config_)) {
    EXPECT_TRUE(Contains(msg, "format version 2"));
    EXPECT_TRUE(test_util::OneLine(msg));
  }
}

TEST_F(CheckpointFaults, AFreshRunDoesNotOverwriteAnotherRunsCheckpoints) {
  const std::string msg = test_util::message_of<InvalidArgument>([&] { Trainer t(config_); });
  EXPECT_TRUE(Contains(msg, "already holds checkpoints"));
  EXPECT_TRUE(Contains(msg, "--resume latest"));
}

TEST_F(CheckpointFaults, AKillLeftStagingFolderIsIgnoredAndCleanedUp) {
  // What a save killed before its commit leaves: a staging folder with partial files.
  const fs::path stale = fs::path(config_.checkpoint.dir) / (checkpoint_folder_name(2) + ".tmp");
  fs::create_directories(stale);
  test_util::write_bytes((stale / "rank-00000.bin.partial").string(), "partial");
  EXPECT_EQ(resolve_checkpoint(config_.checkpoint.dir), folder_);
  TrainConfig c = config_;
  c.checkpoint.resume = "latest";
  train(c, 2, 2, {2});
  EXPECT_EQ(resolve_checkpoint(config_.checkpoint.dir), step_folder(config_.checkpoint.dir, 2));
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_GT(CheckpointReader(step_folder(config_.checkpoint.dir, 2)).verify(), 0u);
}

}  // namespace
}  // namespace tessera::engine
