// Benchmark (not a test): one training step of a model in fp32, bf16 and fp16, side by side
// in one run (rounds interleave the precisions, so machine noise hits all three alike), with
// the per-rank memory each one holds by category.
//
//   build/bench/bench_precision --model gpt2-124M --batch 4 --seq 256 --steps 3 --rounds 2
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <map>
#include <vector>

#include "bench/bench_rounds.h"
#include "runtime/core/logging.h"
#include "runtime/core/memory_stats.h"
#include "runtime/engine/trainer.h"

namespace {

using namespace tessera;

struct Result {
  std::vector<double> ms;  // per timed step, over all rounds
  MemorySnapshot memory;   // after the last step of the last round
};

double mib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tessera fp32 / bf16 / fp16 training-step benchmark"};
  bench::RoundOptions o;
  bench::add_round_options(app, o, "the three precisions");
  CLI11_PARSE(app, argc, argv);
  engine::TrainConfig cfg = bench::round_config(o);
  const std::string& preset = o.preset;
  const int batch = o.batch, seq = o.seq, steps = o.steps, warmup = o.warmup, rounds = o.rounds;
  cfg.loss_scaler.initial_scale_power = 12;  // no skipped steps in a short timing run
  bench::use_random_tokens(cfg, "tessera_bench_precision",
                           static_cast<size_t>(batch) * seq * 8 + 1);

  const std::vector<DType> precisions = {DType::F32, DType::BF16, DType::F16};
  std::map<DType, Result> results;
  for (int round = 0; round < rounds; ++round) {
    for (DType p : precisions) {
      MemoryTracker tracker;  // this configuration's bytes only
      ScopedTracker scoped(tracker);
      engine::TrainConfig c = cfg;
      c.precision = p;
      engine::Trainer trainer(c);
      for (int i = 0; i < warmup; ++i) trainer.step();
      for (int i = 0; i < steps; ++i) results[p].ms.push_back(trainer.step().ms);
      results[p].memory = tracker.snapshot();
    }
  }

  const double fpt = cfg.model.flops_per_token(seq);
  std::printf("model %s: %.1fM params, B=%d T=%d, %d threads, %d rounds x %d steps\n",
              preset.c_str(), cfg.model.num_params() / 1e6, batch, seq, omp_get_max_threads(),
              rounds, steps);
  std::printf("| precision | ms/step (median) | min-max | GFLOP/s | vs fp32 | params MiB | grads "
              "MiB | optimizer MiB | activations MiB | peak total MiB |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const double f32_ms = median(results[DType::F32].ms);
  for (DType p : precisions) {
    const Result& r = results[p];
    const double ms = median(r.ms);
    const auto [lo, hi] = std::minmax_element(r.ms.begin(), r.ms.end());
    const MemorySnapshot& m = r.memory;
    std::printf("| %s | %.0f | %.0f-%.0f | %.1f | %.2fx | %.1f | %.1f | %.1f | %.1f | %.1f |\n",
                std::string(dtype_name(p)).c_str(), ms, *lo, *hi,
                batch * seq / (ms / 1000.0) * fpt / 1e9, f32_ms / ms,
                mib(m.current_of(MemCategory::Params)), mib(m.current_of(MemCategory::Grads)),
                mib(m.current_of(MemCategory::Optimizer)),
                mib(m.current_of(MemCategory::Activations)), mib(m.total_peak));
  }
  return 0;
}
