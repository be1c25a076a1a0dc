// Training checkpoints under mpirun, one rank per process, every process writing its own
// shard into one shared folder:
// - exact resume at the job's size (np 2: DP 2 at ZeRO 1, TP 2, PP 2; np 4: DP 2 x TP 2 at
//   stage 2, fp16 DP 2 x PP 2; np 8: DP 2 x TP 2 x PP 2): bit for bit;
// - resharding: the job's checkpoint continued by each process alone (one rank) within 1e-5
//   relative of the job's own continuation, and a one-rank checkpoint continued by the job;
// - a flipped bit in rank 1's shard: every process fails, naming the shard.
// Tests whose world size does not match the job's are skipped, so the binary runs at each np.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "../engine_test_util.h"
#include "../pipeline_parallel_checks.h"
#include "parallel/comm/mpi_group.h"
#include "runtime/engine/checkpoint_io.h"
#include "runtime/engine/trainer.h"

namespace tessera::engine {
namespace {

namespace fs = std::filesystem;
using test_util::Contains;

constexpr int kSteps = 6;
constexpr int kSaveAt = 3;

// A fresh folder made by rank 0, its path sent to every rank.
std::string shared_folder(parallel::ProcessGroup& world) {
  char path[256] = {};
  if (world.rank() == 0) {
    std::string tmpl = (fs::temp_directory_path() / "tessera_ckpt_mpi_XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    std::strncpy(path, tmpl.c_str(), sizeof(path) - 1);
  }
  world.broadcast(path, sizeof(path) / 2, DType::U16)->wait();
  return path;
}

struct MpiLayout {
  std::string name;
  int world, tp, pp, stage;
  DType precision = DType::F32;
};

TrainConfig mpi_config(const MpiLayout& l, int world, const std::string& dir) {
  TrainConfig c = test_util::pp_config(l.pp, "1f1b", 2);
  c.tensor_parallel = l.tp;
  c.zero.stage = l.stage;
  c.precision = l.precision;
  c.steps = kSteps;
  c.gradient_accumulation_steps = 4 / (world / (l.tp * l.pp));
  c.checkpoint.dir = dir;
  c.output_dir = dir + "/run";
  return c;
}

std::vector<double> train(const TrainConfig& c, parallel::ProcessGroup* world, int until,
                          int save_at = -1) {
  Trainer t(c, world);
  std::vector<double> losses;
  while (t.steps_done() < until) {
    losses.push_back(t.step().loss);
    if (t.steps_done() == save_at) t.save_checkpoint();
  }
  if (t.checkpointer() != nullptr) t.checkpointer()->flush();
  return losses;
}

std::string step_folder(const std::string& root, int step) {
  return (fs::path(root) / checkpoint_folder_name(step)).string();
}

class CheckpointMpi : public testing::TestWithParam<MpiLayout> {};

TEST_P(CheckpointMpi, ResumesExactlyAndReshardsToOneRankAndBack) {
  const MpiLayout l = GetParam();
  parallel::ProcessGroupPtr world = parallel::make_mpi_world();
  if (world->size() != l.world) GTEST_SKIP() << l.name << " runs at -np " << l.world;
  const std::string dir = shared_folder(*world);
  const TrainConfig c = mpi_config(l, l.world, dir + "/ck");
  const std::vector<double> whole = train(c, world.get(), kSteps, kSaveAt);

  TrainConfig resumed = c;
  resumed.checkpoint.dir = dir + "/resumed";
  resumed.checkpoint.resume = step_folder(c.checkpoint.dir, kSaveAt);
  const std::vector<double> rest = train(resumed, world.get(), kSteps);
  ASSERT_EQ(rest.size(), static_cast<size_t>(kSteps - kSaveAt));
  for (int s = kSaveAt; s < kSteps; ++s) {
    EXPECT_EQ(rest[s - kSaveAt], whole[s]) << l.name << " step " << s + 1;
  }
  if (l.precision != DType::F32) return;  // resharding is checked in fp32

  // Each process continues the job's checkpoint alone, as one rank.
  TrainConfig alone = mpi_config({"", 1, 1, 1, 0}, 1, dir + "/alone" + std::to_string(world->rank()));
  alone.checkpoint.resume = step_folder(c.checkpoint.dir, kSaveAt);
  const std::vector<double> moved = train(alone, nullptr, kSteps, kSaveAt + 1);
  for (int s = kSaveAt; s < kSteps; ++s) {
    EXPECT_NEAR(moved[s - kSaveAt], whole[s], 1e-5 * whole[s]) << "one rank, step " << s + 1;
  }
  // And back: rank 0's one-rank checkpoint of step 4, continued by the whole job.
  world->barrier()->wait();
  TrainConfig back = c;
  back.checkpoint.dir = dir + "/back";
  back.checkpoint.resume = step_folder(dir + "/alone0", kSaveAt + 1);
  const std::vector<double> returned = train(back, world.get(), kSteps);
  for (int s = kSaveAt + 1; s < kSteps; ++s) {
    EXPECT_NEAR(returned[s - kSaveAt - 1], whole[s], 1e-5 * whole[s]) << "back, step " << s + 1;
  }

  // A flipped bit in rank 1's shard: every process fails, naming it.
  world->barrier()->wait();
  const std::string shard = step_folder(c.checkpoint.dir, kSaveAt) + "/rank-00001.bin";
  if (world->rank() == 0) {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(64);
    char byte = 0;
    f.read(&byte, 1);
    byte ^= 0x01;
    f.seekp(64);
    f.write(&byte, 1);
  }
  world->barrier()->wait();
  TrainConfig corrupt = resumed;
  corrupt.checkpoint.dir = dir + "/corrupt";
  const std::string msg =
      test_util::message_of<Error>([&] { Trainer t(corrupt, world.get()); });
  EXPECT_TRUE(Contains(msg, "rank-00001.bin"));
  EXPECT_TRUE(Contains(msg, "corrupt"));
  world->barrier()->wait();
  if (world->rank() == 0) fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, CheckpointMpi,
    testing::Values(MpiLayout{"dp2_stage1", 2, 1, 1, 1}, MpiLayout{"tp2", 2, 2, 1, 0},
                    MpiLayout{"pp2", 2, 1, 2, 0}, MpiLayout{"dp2_tp2_stage2", 4, 2, 1, 2},
                    MpiLayout{"fp16_dp2_pp2_stage1", 4, 1, 2, 1, DType::F16},
                    MpiLayout{"dp2_tp2_pp2_stage1", 8, 2, 2, 1}),
    [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace tessera::engine
