// Trainer start-up at ZeRO stages 1-3 builds each rank's shard only:
// - no rank holds the whole fp32 model: during construction on 4 thread ranks the peak of
//   MemCategory::Other stays far below it (under half), and at stage 3 so do the parameters;
// - the model it starts from is exactly the one stage 0 builds: full_params() right after
//   construction equals init_params (seeded) or the whole checkpoint (init_from), bit for bit;
// - fp16's range check runs on the shards and agrees: a too-large weight in one rank's shard
//   fails every rank with the same message; a checkpoint rank 0 cannot read at stage 0 fails
//   every rank with rank 0's message.
// (Losses are unchanged: golden_losses_test.cc.)
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include "engine_test_util.h"
#include "models/weights_io.h"
#include "parallel/comm/thread_group.h"
#include "runtime/engine/trainer.h"

namespace tessera::engine {
namespace {

using test_util::Contains;

TrainConfig startup_config(int stage, DType precision) {
  TrainConfig c;
  c.model = models::gpt_preset("nano");
  c.precision = precision;
  c.micro_batch_size = 2;
  c.seq_len = 32;
  c.steps = 1;
  c.threads = 1;
  c.seed = 4321;
  c.zero.stage = stage;
  c.zero.reduce_bucket_size = 4000;
  c.zero.stage3_param_persistence_threshold = 100;
  c.train_files = {test_util::synthetic_token_file("startup_tokens.bin")};
  c.output_dir = (std::filesystem::path(testing::TempDir()) / "tessera_startup_run").string();
  return c;
}

TEST(ShardedStartup, NoRankBuildsTheWholeFp32Model) {
  for (int stage : {1, 2, 3}) {
    for (DType precision : {DType::F32, DType::BF16}) {
      const TrainConfig c = startup_config(stage, precision);
      const int64_t numel = models::build_gpt_registry(c.model).numel();
      const int64_t fp32_bytes = numel * static_cast<int64_t>(sizeof(float));
      constexpr int kWorld = 4;
      std::vector<MemorySnapshot> at_start(kWorld);
      parallel::spawn_ranks(kWorld, [&](parallel::ProcessGroup& group) {
        MemoryTracker tracker;  // each rank's own, as a process would have
        ScopedTracker scoped(tracker);
        Trainer t(c, &group);
        at_start[group.rank()] = tracker.snapshot();
        t.step();  // and it trains
      });
      for (int r = 0; r < kWorld; ++r) {
        SCOPED_TRACE("stage " + std::to_string(stage) + " " + std::string(dtype_name(precision)) +
                     " rank " + std::to_string(r));
        const MemorySnapshot& s = at_start[r];
        EXPECT_LT(s.peak_of(MemCategory::Other), fp32_bytes / 2);
        if (stage == 3) {
          // Shard, persistent layers and nothing gathered yet: about a quarter.
          EXPECT_LT(s.peak_of(MemCategory::Params), fp32_bytes / 2);
          EXPECT_LT(s.peak_of(MemCategory::Optimizer), fp32_bytes);  // 2-3 fp32 shards
        }
        if (stage == 3 && r == 0) {
          std::printf(
              "[startup] stage 3 %s, 4 ranks: peak other %lld, params %lld bytes; "
              "whole fp32 model %lld\n",
              std::string(dtype_name(precision)).c_str(),
              static_cast<long long>(s.peak_of(MemCategory::Other)),
              static_cast<long long>(s.peak_of(MemCategory::Params)),
              static_cast<long long>(fp32_bytes));
        }
      }
    }
  }
}

// full_params() on every rank right after construction, for `world` thread ranks.
std::vector<std::vector<float>> start_and_gather(const TrainConfig& c, int world) {
  std::vector<std::vector<float>> out(world);
  parallel::spawn_ranks(world, [&](parallel::ProcessGroup& group) {
    Trainer t(c, &group);
    out[group.rank()] = t.full_params();
  });
  return out;
}

TEST(ShardedStartup, StartsFromExactlyTheModelStage0Builds) {
  const TrainConfig base = startup_config(0, DType::F32);
  const ParamRegistry registry = models::build_gpt_registry(base.model);
  std::vector<float> seeded(static_cast<size_t>(registry.numel()));
  init_params(registry, seeded.data(), base.seed);
  // A checkpoint unlike any seed's, every element distinct.
  std::vector<float> loaded(seeded.size());
  for (size_t i = 0; i < loaded.size(); ++i) {
    loaded[i] = 0.01f * static_cast<float>((i * 7919) % 1000) - 5.0f;
  }
  test_util::ScratchDir dir;
  const std::string path = dir.file("start.safetensors");
  models::save_gpt_safetensors(path, base.model, registry, loaded.data());
  for (int stage : {0, 1, 2, 3}) {
    for (DType precision : {DType::F32, DType::BF16, DType::F16}) {
      for (bool from_file : {false, true}) {
        SCOPED_TRACE("stage " + std::to_string(stage) + " " + std::string(dtype_name(precision)) +
                     (from_file ? " init_from" : " seeded"));
        TrainConfig c = startup_config(stage, precision);
        if (from_file) c.init_from = path;
        const std::vector<float>& want = from_file ? loaded : seeded;
        for (const std::vector<float>& got : start_and_gather(c, 3)) {  // 3 ranks: padding
          ASSERT_EQ(got.size(), want.size());
          EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0);
        }
      }
    }
  }
}

// Every rank's exception message from constructing a Trainer (empty where none was thrown).
std::vector<std::string> construction_errors(const TrainConfig& c, int world) {
  std::vector<std::string> messages(world);
  parallel::spawn_ranks(world, [&](parallel::ProcessGroup& group) {
    try {
      Trainer t(c, &group);
    } catch (const InvalidArgument& e) {
      messages[group.rank()] = e.what();
    }
  });
  return messages;
}

TEST(ShardedStartup, Fp16RangeCheckOnOneRanksShardFailsEveryRankAlike) {
  TrainConfig c = startup_config(3, DType::F16);
  const ParamRegistry registry = models::build_gpt_registry(c.model);
  std::vector<float> w(static_cast<size_t>(registry.numel()), 0.01f);
  // Inside rank 2's shard of 4: only that rank sees the value.
  const int64_t at = registry.numel() * 5 / 8;
  std::string name;
  for (const ParamSpec& p : registry.params()) {
    if (p.offset <= at && at < p.offset + p.numel()) name = p.name;
  }
  w[at] = -1e5f;
  test_util::ScratchDir dir;
  c.init_from = dir.file("big.safetensors");
  models::save_gpt_safetensors(c.init_from, c.model, registry, w.data());
  for (int stage : {1, 2, 3}) {
    c.zero.stage = stage;
    const std::vector<std::string> messages = construction_errors(c, 4);
    for (const std::string& m : messages) {
      EXPECT_EQ(m, messages[0]) << "stage " << stage;
      EXPECT_TRUE(Contains(m, "'" + name + "'")) << m;
      EXPECT_TRUE(Contains(m, "magnitude 100000")) << m;
      EXPECT_TRUE(Contains(m, "beyond fp16's largest finite value 65504")) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    }
  }
}

TEST(ShardedStartup, AnUnreadableCheckpointFailsEveryRankWithOneMessage) {
  for (int stage : {0, 1, 3}) {
    TrainConfig c = startup_config(stage, DType::F32);
    c.init_from = "/nonexistent/tessera/model.safetensors";
    const std::vector<std::string> messages = construction_errors(c, 3);
    for (const std::string& m : messages) {
      EXPECT_EQ(m, messages[0]) << "stage " << stage;
      EXPECT_TRUE(Contains(m, "/nonexistent/tessera/model.safetensors")) << m;
    }
  }
}

}  // namespace
}  // namespace tessera::engine
