// Optimizer offload under mpirun, one rank per process, each with its own swap file in one
// folder: with the states on disk the losses are bit for bit those of the states in memory
// (np 2: ZeRO 1 bf16 and 3 f32; np 4: ZeRO 2 bf16 and DP 2 x TP 2 at stage 1; and at stage 3
// with the parameters on disk too, np 2 bf16 and np 4 f32), no swap file is
// ever visible in the folder, and an I/O error injected on rank 1 mid-run stops every process
// (the main's abort) — that last one in tests/multirank/offload_cli.sh, since it ends the job.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "../engine_test_util.h"
#include "parallel/comm/mpi_group.h"
#include "runtime/engine/trainer.h"

namespace tessera::engine {
namespace {

namespace fs = std::filesystem;

struct MpiCase {
  std::string name;
  int world, tp, stage;
  DType precision;
  bool params_on_disk = false;  // stage 3: offload_param nvme as well
};

// A fresh folder made by rank 0, its path sent to every rank.
std::string shared_folder(parallel::ProcessGroup& world) {
  char path[256] = {};
  if (world.rank() == 0) {
    std::string tmpl = (fs::temp_directory_path() / "tessera_offload_mpi_XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    std::strncpy(path, tmpl.c_str(), sizeof(path) - 1);
  }
  world.broadcast(path, sizeof(path) / 2, DType::U16)->wait();
  return path;
}

TrainConfig mpi_config(const MpiCase& l, const std::string& dir) {
  TrainConfig c;
  c.model = models::gpt_preset("nano");
  c.precision = l.precision;
  c.tensor_parallel = l.tp;
  c.micro_batch_size = 2;
  c.gradient_accumulation_steps = 4 / (l.world / l.tp);
  c.gradient_clipping = 0.5;
  c.optimizer.lr = 3e-3f;
  c.seq_len = 32;
  c.steps = 5;
  c.zero.stage = l.stage;
  c.zero.reduce_bucket_size = 4000;
  c.zero.stage3_param_persistence_threshold = 100;
  c.zero.sub_group_size = 5000;
  c.train_files = {test_util::synthetic_token_file("offload_mpi_tokens.bin")};
  c.output_dir = dir + "/run";
  return c;
}

class OffloadMpi : public testing::TestWithParam<MpiCase> {};

TEST_P(OffloadMpi, StatesOnDiskGiveTheBitsOfStatesInMemory) {
  const MpiCase l = GetParam();
  parallel::ProcessGroupPtr world = parallel::make_mpi_world();
  if (world->size() != l.world) GTEST_SKIP() << l.name << " runs at -np " << l.world;
  const std::string dir = shared_folder(*world);
  const TrainConfig in_memory = mpi_config(l, dir);
  TrainConfig on_disk = in_memory;
  memory::OffloadOptimizerOptions& o = on_disk.zero.offload_optimizer;
  o.device = memory::OffloadDevice::Nvme;
  o.nvme_path = dir;
  o.buffer_count = 9;
  o.pipeline_read = o.pipeline_write = true;
  if (l.params_on_disk) {
    memory::OffloadParamOptions& p = on_disk.zero.offload_param;
    p.device = memory::OffloadDevice::Nvme;
    p.nvme_path = dir;
    p.max_in_cpu = 10'000;  // part of a shard in memory: ranks differ in what they read
    p.buffer_size = 1'000'000;
  }
  const auto run = [&](const TrainConfig& c) {
    Trainer t(c, world.get());
    std::vector<double> out;
    bool visible = false;
    for (int s = 0; s < c.steps; ++s) {
      const StepStats st = t.step();
      out.push_back(st.loss);
      out.push_back(st.grad_norm);
      for (const auto& entry : fs::directory_iterator(dir)) {
        visible |= entry.path().filename() != "run";
      }
    }
    EXPECT_FALSE(visible) << "a swap file showed in " << dir;
    return out;
  };
  const std::vector<double> want = run(in_memory);
  const std::vector<double> got = run(on_disk);
  EXPECT_EQ(got, want);
  world->barrier()->wait();
  if (world->rank() == 0) fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(
    Mpi, OffloadMpi,
    testing::Values(MpiCase{"np2_stage1_bf16", 2, 1, 1, DType::BF16},
                    MpiCase{"np2_stage3_f32", 2, 1, 3, DType::F32},
                    MpiCase{"np4_stage2_bf16", 4, 1, 2, DType::BF16},
                    MpiCase{"np4_tp2_stage1_f32", 4, 2, 1, DType::F32},
                    MpiCase{"np2_stage3_bf16_params_on_disk", 2, 1, 3, DType::BF16, true},
                    MpiCase{"np4_stage3_f32_params_on_disk", 4, 1, 3, DType::F32, true}),
    [](const testing::TestParamInfo<MpiCase>& info) { return info.param.name; });

}  // namespace
}  // namespace tessera::engine
