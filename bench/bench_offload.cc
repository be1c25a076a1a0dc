// Benchmark (not a test): the training step with the optimizer's states on disk
// (docs/PERFORMANCE.md, "Offload"; the swap files' raw I/O is bench_aio's).
//
// gpt2-124M (B 4, T 256, bf16, one rank, ZeRO stage 1) with the optimizer's states in
//       memory against the same run with them on disk (sub-groups of --sub-group elements,
//       buffer_count 9, pipeline_read and pipeline_write), in interleaved rounds (memory, disk,
//       memory, disk, ...) of --steps timed steps each: the median step time of each and the
//       median of the rounds' ratios, with the spread.
//
//   build/bench/bench_offload                      (swap files under $TMPDIR)
//   build/bench/bench_offload --rounds 5 --dir /mnt/nvme
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

void bench_step(const std::string& dir, int rounds, int steps, int64_t sub_group) {
  engine::TrainConfig base = bench::step_config("gpt2-124M", 4, 256);
  bench::use_random_tokens(base, "tessera_bench_offload", 2'000'000);
  base.precision = DType::BF16;
  base.zero.stage = 1;
  base.steps = 1'000'000;
  engine::TrainConfig in_memory = base;
  in_memory.zero.offload_optimizer.device = memory::OffloadDevice::Cpu;  // same layout, in RAM
  engine::TrainConfig on_disk = base;
  memory::OffloadOptimizerOptions& o = on_disk.zero.offload_optimizer;
  o.device = memory::OffloadDevice::Nvme;
  o.nvme_path = dir;
  o.buffer_count = 9;
  o.pipeline_read = o.pipeline_write = true;
  on_disk.zero.sub_group_size = sub_group;
  fmt::print("bench_offload: gpt2-124M, B 4 x T 256, bf16, 1 rank, ZeRO 1, {} threads; optimizer in "
             "memory vs on disk (sub-groups of {}, 3 in memory), {} rounds of {} steps\n",
             omp_get_max_threads(), sub_group, rounds, steps);
  engine::Trainer memory_run(in_memory);
  engine::Trainer disk_run(on_disk);
  memory_run.step();  // warm-up: first touch of every buffer
  disk_run.step();
  std::vector<double> mem_times, disk_times, ratios;
  for (int r = 0; r < rounds; ++r) {
    const auto window = [&](engine::Trainer& t) {
      std::vector<double> s;
      for (int i = 0; i < steps; ++i) {
        const double t0 = now_s();
        t.step();
        s.push_back(now_s() - t0);
      }
      return median(s);
    };
    const double m = window(memory_run);
    const double d = window(disk_run);
    mem_times.push_back(m);
    disk_times.push_back(d);
    ratios.push_back(d / m);
    fmt::print("  round {}: in memory {:.3f} s/step, on disk {:.3f} s/step, ratio {:.3f}\n",
               r + 1, m, d, d / m);
  }
  std::sort(ratios.begin(), ratios.end());
  fmt::print("  median: in memory {:.3f} s/step, on disk {:.3f} s/step; ratio {:.3f} (rounds "
             "{:.3f}-{:.3f}); target <= 1.5\n",
             median(mem_times), median(disk_times), median(ratios), ratios.front(),
             ratios.back());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_offload: the training step with the optimizer's states on disk"};
  std::string dir = fs::temp_directory_path().string();
  int rounds = 3, steps = 5;
  int64_t sub_group = 10'000'000;
  app.add_option("--dir", dir, "folder for the swap file (the disk measured)")
      ->capture_default_str();
  app.add_option("--rounds", rounds, "interleaved rounds")->capture_default_str();
  app.add_option("--steps", steps, "timed steps per round and configuration")
      ->capture_default_str();
  app.add_option("--sub-group", sub_group, "sub_group_size")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  init_logging();
  spdlog::set_level(spdlog::level::warn);
  bench_step(dir, rounds, steps, sub_group);
  return 0;
}
