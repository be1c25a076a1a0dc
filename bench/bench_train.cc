// Benchmark (not a test): tokens/s and achieved GFLOP/s of full training steps, beside the
// sgemm GFLOP/s of the same model's linear-layer shapes (the practical ceiling).
//
// FLOPs per token = 6 N + 12 L C T (N = parameters without the position embedding; forward
// + backward of every matmul, plus the attention scores and their weighted sums).
//
//   build/bench/bench_train --model gpt2-124M --batch 4 --seq 256 --threads 1,2 --steps 5
#include <omp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <sstream>
#include <vector>

#include "bench/bench_data.h"
#include "runtime/core/logging.h"
#include "runtime/engine/trainer.h"
#include "runtime/kernels/cpu_kernels.h"

namespace {

using namespace tessera;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// FLOP-weighted sgemm speed over one training step's linear layers at this shape: every
// forward product and its two backward products, as the model issues them.
double sgemm_ceiling(const models::GPTConfig& m, int64_t BT, int repeats) {
  struct Shape {
    bool ta, tb;
    int64_t M, N, K;
  };
  const int64_t C = m.n_embd, V = m.vocab_size;
  std::vector<Shape> shapes;
  const int64_t linears[][2] = {{C, 3 * C}, {C, C}, {C, 4 * C}, {4 * C, C}};
  for (auto [in, out] : linears) {
    shapes.push_back({false, true, BT, out, in});   // forward
    shapes.push_back({false, false, BT, in, out});  // dinp
    shapes.push_back({true, false, out, in, BT});   // dweight
  }
  const int64_t head_rows = std::min<int64_t>(BT, kernels::cpu::kHeadChunkRows);
  const int64_t head_shapes[][3] = {{head_rows, V, C}, {head_rows, C, V}, {V, C, head_rows}};
  const bool head_trans[][2] = {{false, true}, {false, false}, {true, false}};
  for (int i = 0; i < 3; ++i) {
    shapes.push_back({head_trans[i][0], head_trans[i][1], head_shapes[i][0], head_shapes[i][1],
                      head_shapes[i][2]});
  }
  double flops = 0, secs = 0;
  for (const Shape& s : shapes) {
    std::vector<float> A(s.M * s.K, 0.5f), B(s.K * s.N, 0.25f), Cm(s.M * s.N, 0.0f);
    const int64_t lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
    kernels::cpu::gemm<float>(s.ta, s.tb, s.M, s.N, s.K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f,
                              Cm.data(), s.N);  // warm-up: page faults, JIT
    double best = 1e30;
    for (int r = 0; r < repeats; ++r) {
      const auto t = Clock::now();
      kernels::cpu::gemm<float>(s.ta, s.tb, s.M, s.N, s.K, 1.0f, A.data(), lda, B.data(), ldb,
                                0.0f, Cm.data(), s.N);
      best = std::min(best, seconds_since(t));
    }
    flops += 2.0 * s.M * s.N * s.K;
    secs += best;
  }
  return flops / secs / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tessera training-step benchmark"};
  std::string preset = "gpt2-124M";
  int batch = 4, seq = 256, steps = 5, warmup = 1, vocab = 0;
  std::string threads_list = "1,2";
  app.add_option("--model", preset, "model preset")->capture_default_str();
  app.add_option("--batch", batch, "micro-batch size B")->capture_default_str();
  app.add_option("--seq", seq, "sequence length T")->capture_default_str();
  app.add_option("--steps", steps, "timed steps per thread count")->capture_default_str();
  app.add_option("--warmup", warmup, "untimed steps first")->capture_default_str();
  app.add_option("--threads", threads_list, "comma-separated thread counts")->capture_default_str();
  app.add_option("--vocab", vocab, "override the preset's vocab_size");
  CLI11_PARSE(app, argc, argv);
  setenv("TESSERA_LOG_LEVEL", "warn", 0);
  init_logging();

  engine::TrainConfig cfg = bench::step_config(preset, batch, seq);
  if (vocab > 0) cfg.model.vocab_size = vocab;
  cfg.steps = warmup + steps;
  bench::use_random_tokens(cfg, "tessera_bench", static_cast<size_t>(batch) * seq * 4 + 1);

  const double fpt = cfg.model.flops_per_token(seq);
  std::printf("model %s: %.1fM params, B=%d T=%d, %.3f GFLOP/token (6N + 12LCT)\n", preset.c_str(),
              cfg.model.num_params() / 1e6, batch, seq, fpt / 1e9);
  std::printf("| threads | ms/step | tokens/s | GFLOP/s | sgemm GFLOP/s | step/sgemm |\n");
  std::printf("|---|---|---|---|---|---|\n");
  std::stringstream ss(threads_list);
  for (std::string item; std::getline(ss, item, ',');) {
    const int threads = std::stoi(item);
    omp_set_num_threads(threads);
    engine::Trainer trainer(cfg);
    for (int i = 0; i < warmup; ++i) trainer.step();
    double total_ms = 0;
    for (int i = 0; i < steps; ++i) total_ms += trainer.step().ms;
    const double ms = total_ms / steps;
    const double tok_s = batch * seq / (ms / 1000.0);
    const double gflops = tok_s * fpt / 1e9;
    const double ceiling = sgemm_ceiling(cfg.model, int64_t{batch} * seq, 3);
    std::printf("| %d | %.1f | %.0f | %.1f | %.1f | %.0f%% |\n", threads, ms, tok_s, gflops,
                ceiling, 100.0 * gflops / ceiling);
    std::fflush(stdout);
  }
  return 0;
}
