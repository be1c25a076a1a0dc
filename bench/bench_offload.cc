// Benchmark (not a test): the training step with the optimizer's states offloaded
// (docs/PERFORMANCE.md, "Offload"; the swap files' raw I/O is bench_aio's).
//
// gpt2-124M (B 4, T 256, bf16, one rank, ZeRO stage 1) with the optimizer's states in
//       memory (no offload), in the host tier (offload cpu: the ZeRO-Offload pipeline, whose
//       copies are the memcpy twin's on the CPU backend) and on disk (sub-groups of
//       --sub-group elements, --buffer-count buffers (9: three sub-groups in memory),
//       pipeline_read and pipeline_write), in
//       interleaved rounds (memory, host, disk, memory, ...) of --steps timed steps each: the
//       median step time of each and the median of the rounds' ratios, with the spread.
//
//   build/bench/bench_offload                      (swap files under $TMPDIR)
//   build/bench/bench_offload --rounds 5 --dir /mnt/nvme
//   build/bench/bench_offload --buffer-count 21      (more of the states in memory)
#include <fmt/format.h>
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "bench/bench_data.h"
#include "runtime/core/logging.h"
#include "runtime/engine/trainer.h"

namespace {

using namespace tessera;
namespace fs = std::filesystem;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

void bench_step(const std::string& dir, int rounds, int steps, int64_t sub_group, int buffers) {
  engine::TrainConfig none = bench::step_config("gpt2-124M", 4, 256);
  bench::use_random_tokens(none, "tessera_bench_offload", 2'000'000);
  none.precision = DType::BF16;
  none.zero.stage = 1;  // one rank without offload: nothing to shard, the plain layout
  none.steps = 1'000'000;
  engine::TrainConfig host = none;
  host.zero.offload_optimizer.device = memory::OffloadDevice::Cpu;
  engine::TrainConfig disk = none;
  memory::OffloadOptimizerOptions& o = disk.zero.offload_optimizer;
  o.device = memory::OffloadDevice::Nvme;
  o.nvme_path = dir;
  o.buffer_count = buffers;
  o.pipeline_read = o.pipeline_write = true;
  disk.zero.sub_group_size = sub_group;
  fmt::print("bench_offload: gpt2-124M, B 4 x T 256, bf16, 1 rank, ZeRO 1, {} threads; optimizer "
             "in memory (no offload) vs the host tier (offload cpu: the memcpy twin's copies) vs "
             "on disk (nvme, sub-groups of {}, buffer_count {}: {} in memory), {} rounds of {} "
             "steps\n",
             omp_get_max_threads(), sub_group, buffers, buffers / 3, rounds, steps);
  struct Variant {
    const char* name;
    engine::Trainer trainer;
    std::vector<double> times, ratios;
  };
  Variant variants[] = {{"in memory", engine::Trainer(none), {}, {}},
                        {"host tier", engine::Trainer(host), {}, {}},
                        {"on disk", engine::Trainer(disk), {}, {}}};
  for (Variant& v : variants) v.trainer.step();  // warm-up: first touch of every buffer
  for (int r = 0; r < rounds; ++r) {
    fmt::print("  round {}:", r + 1);
    for (Variant& v : variants) {
      std::vector<double> s;
      for (int i = 0; i < steps; ++i) {
        const double t0 = now_s();
        v.trainer.step();
        s.push_back(now_s() - t0);
      }
      v.times.push_back(median(s));
      v.ratios.push_back(v.times.back() / variants[0].times.back());
      fmt::print(" {} {:.3f} s/step,", v.name, v.times.back());
    }
    fmt::print("\n");
  }
  for (Variant& v : variants) {
    std::sort(v.ratios.begin(), v.ratios.end());
    fmt::print("  {}: median {:.3f} s/step; against in memory {:.3f} (rounds {:.3f}-{:.3f})\n",
               v.name, median(v.times), median(v.ratios), v.ratios.front(), v.ratios.back());
  }
  fmt::print("  target: on disk <= 1.5 x in memory\n");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_offload: the training step with the optimizer's states on disk"};
  std::string dir = fs::temp_directory_path().string();
  int rounds = 3, steps = 5;
  int64_t sub_group = 10'000'000;
  int buffers = 9;
  app.add_option("--dir", dir, "folder for the swap file (the disk measured)")
      ->capture_default_str();
  app.add_option("--rounds", rounds, "interleaved rounds")->capture_default_str();
  app.add_option("--steps", steps, "timed steps per round and configuration")
      ->capture_default_str();
  app.add_option("--sub-group", sub_group, "sub_group_size")->capture_default_str();
  app.add_option("--buffer-count", buffers, "offload_optimizer.buffer_count (3 per sub-group)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  init_logging();
  spdlog::set_level(spdlog::level::warn);
  bench_step(dir, rounds, steps, sub_group, buffers);
  return 0;
}
