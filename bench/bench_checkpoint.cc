// Benchmark (not a test): what a training checkpoint costs the step, synchronous against
// async_save, for gpt2-124M (docs/PERFORMANCE.md, "Checkpoints").
//
// One trainer per mode (none, sync, async), each warmed up, then rounds of two windows of
// `window` steps each: one without a save, one whose first step saves. The stall of a save is
// the second window's time less the first's (the median over rounds), so whatever a save
// costs later steps (an async writer competing for the cores, the commit) is counted. Also
// printed: how long save_checkpoint() held the step (sync: the copy into the host buffer, the
// write and the commit; async: the copy), the shard's write time (CRC-32C, write, fsync) and
// throughput, and how long a resume takes against a fresh start.
//
//   build/bench/bench_checkpoint                       (gpt2-124M, B 4, T 128, 3 rounds of 4 steps)
//   build/bench/bench_checkpoint --model nano --rounds 2
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

struct ModeResult {
  std::string mode;
  std::vector<double> plain, saving, held, write;
  double bytes = 0.0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_checkpoint: the step-time stall of a checkpoint save, sync against async"};
  std::string model = "gpt2-124M";
  int batch = 4, seq = 128, rounds = 3, window = 4;
  app.add_option("--model", model, "model preset")->capture_default_str();
  app.add_option("--batch", batch, "micro-batch size")->capture_default_str();
  app.add_option("--seq", seq, "sequence length")->capture_default_str();
  app.add_option("--rounds", rounds, "measured rounds per mode")->capture_default_str();
  app.add_option("--window", window, "steps per measured window")->capture_default_str();
  bool verbose = false;
  app.add_flag("--verbose", verbose, "print every step of the windows with a save");
  CLI11_PARSE(app, argc, argv);
  init_logging();
  spdlog::set_level(spdlog::level::warn);

  engine::TrainConfig base = bench::step_config(model, batch, seq);
  bench::use_random_tokens(base, "tessera_bench_checkpoint", 4'000'000);
  base.steps = 1'000'000;
  const fs::path root = fs::temp_directory_path() / "tessera_bench_checkpoint";
  fmt::print("bench_checkpoint: {} ({:.1f}M parameters), B {} x T {}, 1 rank, {} threads; "
             "checkpoints under {}\n",
             model, base.model.num_params() / 1e6, batch, seq, omp_get_max_threads(),
             root.string());

  std::vector<ModeResult> results;
  for (const std::string mode : {"none", "sync", "async"}) {
    engine::TrainConfig c = base;
    if (mode != "none") {
      c.checkpoint.dir = (root / ("ck_" + std::string(mode))).string();
      fs::remove_all(c.checkpoint.dir);
      c.checkpoint.async_save = mode == "async";
      c.checkpoint.keep_last = 1;
    }
    engine::Trainer t(c);
    for (int i = 0; i < 2; ++i) t.step();  // warm-up
    ModeResult r;
    r.mode = mode;
    for (int round = 0; round < rounds; ++round) {
      double start = now_s();
      for (int i = 0; i < window; ++i) {
        t.step();
        if (t.checkpointer() != nullptr) t.checkpointer()->poll();
      }
      r.plain.push_back(now_s() - start);
      start = now_s();
      for (int i = 0; i < window; ++i) {
        const double s0 = now_s();
        t.step();
        const double s1 = now_s();
        if (i == 0 && t.checkpointer() != nullptr) {
          t.save_checkpoint();
          r.held.push_back(now_s() - s1);
        }
        if (t.checkpointer() != nullptr) t.checkpointer()->poll();
        if (verbose) fmt::print("  {} round {} step {}: {:.3f} s, save/poll {:.3f} s\n", mode, round, i, s1 - s0, now_s() - s1);
      }
      // An async save still being written at the window's end: its wait counts.
      if (t.checkpointer() != nullptr) t.checkpointer()->flush();
      r.saving.push_back(now_s() - start);
      if (t.checkpointer() != nullptr) r.write.push_back(t.checkpointer()->last_write_seconds());
    }
    if (t.checkpointer() != nullptr) {
      engine::CheckpointReader reader(engine::resolve_checkpoint(c.checkpoint.dir));
      r.bytes = static_cast<double>(reader.manifest().total_bytes());
    }
    results.push_back(r);
  }

  fmt::print("\n| mode | step (s) | {}-step window (s) | with a save (s) | stall (s) | "
             "save_checkpoint() held the step (s) | shard write (s) | write GB/s |\n|---|---|---|---|---|---|---|---|\n",
             window);
  for (const ModeResult& r : results) {
    const double plain = median(r.plain), saving = median(r.saving);
    const double write = median(r.write);
    fmt::print("| {} | {:.3f} | {:.3f} | {:.3f} | {} | {} | {} | {} |\n", r.mode, plain / window,
               plain, saving, r.mode == "none" ? "-" : fmt::format("{:.3f}", saving - plain),
               r.held.empty() ? "-" : fmt::format("{:.3f}", median(r.held)),
               r.write.empty() ? "-" : fmt::format("{:.3f}", write),
               r.write.empty() ? "-" : fmt::format("{:.2f}", r.bytes / write / 1e9));
  }
  const ModeResult& saved = results[1];
  fmt::print("\ncheckpoint: {:.1f} MiB (fp32 master, Adam m and v)\n", saved.bytes / (1 << 20));

  // Resuming against a fresh start (seeded init).
  engine::TrainConfig fresh = base;
  double start = now_s();
  { engine::Trainer t(fresh); }
  const double fresh_s = now_s() - start;
  engine::TrainConfig resumed = base;
  resumed.checkpoint.dir = (root / "ck_sync").string();
  resumed.checkpoint.resume = "latest";
  start = now_s();
  { engine::Trainer t(resumed); }
  fmt::print("start-up: fresh {:.2f} s, resumed from the checkpoint {:.2f} s (every piece's "
             "CRC-32C checked)\n",
             fresh_s, now_s() - start);
  fs::remove_all(root);
  return 0;
}
