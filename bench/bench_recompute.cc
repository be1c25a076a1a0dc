// Benchmark (not a test): activation checkpointing's cost and saving. One training step of a
// model without checkpointing, with full (every block) and with selective recomputation, side
// by side in one run (rounds interleave the policies, so machine noise hits all alike): the
// step time against no checkpointing, and the activation bytes per block against the
// formulas of docs/PERFORMANCE.md.
//
//   build/bench/bench_recompute --model gpt2-124M --batch 4 --seq 256 --steps 3 --rounds 2
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

double mib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tessera activation-checkpointing benchmark"};
  bench::RoundOptions o;
  std::string precision = "f32";
  bench::add_round_options(app, o, "policies");
  app.add_option("--dtype", precision, "f32, bf16 or f16")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  engine::TrainConfig cfg = bench::round_config(o);
  const std::string& preset = o.preset;
  const int batch = o.batch, seq = o.seq, steps = o.steps, warmup = o.warmup, rounds = o.rounds;
  cfg.precision = parse_dtype(precision);
  cfg.loss_scaler.initial_scale_power = 12;
  bench::use_random_tokens(cfg, "tessera_bench_recompute", static_cast<size_t>(batch) * seq * 8 + 1);

  using models::RecomputeGranularity;
  const std::vector<RecomputeGranularity> policies = {
      RecomputeGranularity::None, RecomputeGranularity::Full, RecomputeGranularity::Selective};
  std::map<RecomputeGranularity, std::vector<double>> ms;
  std::map<RecomputeGranularity, int64_t> per_slot, total;
  std::map<RecomputeGranularity, std::vector<double>> losses;
  for (int round = 0; round < rounds; ++round) {
    for (RecomputeGranularity g : policies) {
      engine::TrainConfig c = cfg;
      c.recompute.granularity = g;
      engine::Trainer trainer(c);
      models::Stage<float>& stage = trainer.model().stage();
      per_slot[g] = stage.activation_bytes_for(2, batch, seq) - stage.activation_bytes_for(1, batch, seq);
      total[g] = stage.activation_bytes();
      std::vector<double> round_losses;
      for (int i = 0; i < warmup; ++i) round_losses.push_back(trainer.step().loss);
      for (int i = 0; i < steps; ++i) {
        const engine::StepStats s = trainer.step();
        ms[g].push_back(s.ms);
        round_losses.push_back(s.loss);
      }
      if (round == 0) losses[g] = round_losses;
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const int L = cfg.model.n_layer;
  const int64_t BTC = int64_t{batch} * seq * cfg.model.n_embd;
  const double none_ms = median(ms[RecomputeGranularity::None]);
  std::printf("model %s: %.1fM params, %d layers, B=%d T=%d, %s, %d threads, %d rounds x %d steps\n",
              preset.c_str(), cfg.model.num_params() / 1e6, L, batch, seq, precision.c_str(),
              omp_get_max_threads(), rounds, steps);
  std::printf("| policy | ms/step (median) | min-max | vs none | activations MiB (total) | per "
              "micro-batch MiB | per block MiB | losses identical |\n|---|---|---|---|---|---|---|---|\n");
  for (RecomputeGranularity g : policies) {
    const auto [lo, hi] = std::minmax_element(ms[g].begin(), ms[g].end());
    // Per block: the per-micro-batch bytes less what every policy keeps (the stage input and
    // the final LayerNorm's share: full's bytes less its one fp32 checkpoint per block).
    const int64_t kept = per_slot[RecomputeGranularity::Full] - int64_t{L} * BTC * 4;
    const double per_block = mib(per_slot[g] - kept) / L;
    std::printf("| %s | %.0f | %.0f-%.0f | %.3fx | %.1f | %.1f | %.2f | %s |\n",
                models::granularity_name(g).c_str(), median(ms[g]), *lo, *hi,
                median(ms[g]) / none_ms, mib(total[g]), mib(per_slot[g]), per_block,
                losses[g] == losses[RecomputeGranularity::None] ? "yes" : "NO");
  }
  std::printf("formulas per block: none 14 BTC stored + (2 BTC + 4 BT + B H T) fp32; full 4 BTC "
              "bytes (fp32 checkpoint) = %.2f MiB; selective drops 2 BTC stored (6 with fp32 "
              "storage)\n",
              mib(BTC * 4));
  return 0;
}
