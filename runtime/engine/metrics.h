// Training metrics, once per optimizer step: a JSON line in <run_dir>/metrics.jsonl,
// TensorBoard scalars in an event file beside it, and the console (a log line every
// steps_per_print steps, or a progress bar redrawn in place when the console is a terminal).
// Only rank 0 writes; on other ranks the logger does nothing, so every rank can own one.
#pragma once

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>

#include "runtime/core/dtype.h"
#include "runtime/core/memory_stats.h"

namespace tessera::engine {

class EventWriter;

// One optimizer step's numbers, as every rank agrees on them (losses already averaged over
// the data-parallel group).
struct StepMetrics {
  int64_t step = 0;  // 1-based
  double loss = 0.0;
  double lr = 0.0;
  double grad_norm = 0.0;     // before clipping
  double tokens_per_s = 0.0;  // the whole data-parallel group's
  double ms = 0.0;            // wall time of the step
  double gflops = 0.0;  // achieved model GFLOP/s of the group: tokens_per_s * flops_per_token / 1e9
  double mfu = 0.0;     // model_flops_utilization() of this step, 0..1
  MemorySnapshot memory;  // this rank's bytes by category, current and peak
  // Mixed precision and evaluation fill these when they apply; absent keys stay absent.
  std::optional<double> loss_scale;
  std::optional<int64_t> skipped_steps;   // steps skipped so far for overflowing gradients
  std::optional<int64_t> overflow_count;  // overflows seen so far
  std::optional<double> val_loss;
};

// Model FLOPs utilisation (PaLM, appendix B): the FLOP/s the model's arithmetic needs at the
// measured throughput, over the hardware's peak FLOP/s:
//
//   mfu = tokens_per_s * flops_per_token / (world * peak_gflops_per_rank * 1e9)
//
// tokens_per_s is the whole group's, flops_per_token = 6 N + 12 L d T (forward and
// backward; GPTConfig::flops_per_token), world the number of ranks sharing those tokens.
// Recomputation and communication count as overhead, never as useful FLOPs.
double model_flops_utilization(double tokens_per_s, double flops_per_token, int world,
                               double peak_gflops_per_rank);

// One rank's peak GFLOP/s at a working precision: TESSERA_PEAK_GFLOPS when set to a number,
// else kPeakGflopsPerThread x threads (the rank's OpenMP threads, one per core), doubled for
// bf16 on a CPU with AVX512_BF16 (its dot products do two multiply-adds per fp32 lane; f16
// GEMMs are widened to fp32 on a CPU, so their peak is fp32's).
double peak_gflops_per_rank(int threads, DType precision = DType::F32);
// The measured AVX-512 FMA peak of one core of the 2-core AMD EPYC (Zen 4) machines tessera
// is developed on: 115.8 GFLOP/s with 12 independent FMA chains (bench/bench_fma_peak.cc),
// i.e. 32 fp32 FLOP per cycle at ~3.6 GHz. The same loop gets 65-74 while other jobs share
// the machine, so a busy machine's MFU reads low. Set TESSERA_PEAK_GFLOPS on other hardware
// (e.g. a GPU's dense fp32 or tensor-core peak).
inline constexpr double kPeakGflopsPerThread = 115.0;

enum class ConsoleMode {
  Auto,      // progress bar when the console stream is a terminal (and the log level shows
             // info), plain lines otherwise
  Plain,     // log lines only (every steps_per_print steps, step 1, the last, evaluations)
  Progress,  // the bar, and the same log lines above it
  Off,
};

struct MetricsOptions {
  std::string run_dir;      // metrics.jsonl and the event file go here (created if needed)
  int64_t total_steps = 0;  // for the progress bar, the ETA and "is this the last step"
  int steps_per_print = 10;
  int rank = 0;  // only rank 0 writes anything
  // > 0: a run resumed after this step. metrics.jsonl keeps its records up to it (a killed
  // run may have logged later steps it never saved) and continues after them; TensorBoard
  // gets a new event file, as it does for every restart.
  int64_t resume_after_step = 0;
  bool tensorboard = true;
  ConsoleMode console = ConsoleMode::Auto;
  // Where the bar goes: the log's stream (spdlog writes to stderr so that stdout stays clean
  // for generated text), so Auto checks whether *this* stream is a terminal.
  std::FILE* console_stream = stderr;
};

class MetricsLogger {
 public:
  explicit MetricsLogger(MetricsOptions options);
  ~MetricsLogger();
  MetricsLogger(const MetricsLogger&) = delete;
  MetricsLogger& operator=(const MetricsLogger&) = delete;

  // Records one step everywhere; flushes the files so a crash loses at most this step.
  void log_step(const StepMetrics& m);
  // Ends the progress bar's line (also done by the destructor and after the last step).
  void finish();

  bool writes() const { return options_.rank == 0; }
  bool progress_bar() const { return progress_bar_; }
  std::string jsonl_path() const;
  std::string event_file_path() const;  // "" without TensorBoard or on ranks other than 0

  // The console line for a step (also what a plain console prints), exposed for tests.
  std::string format_line(const StepMetrics& m) const;
  std::string format_progress(const StepMetrics& m, double eta_s) const;

 private:
  bool should_print(const StepMetrics& m) const;
  void draw_progress(const StepMetrics& m);
  void clear_progress();

  MetricsOptions options_;
  bool progress_bar_ = false;
  bool bar_visible_ = false;
  std::ofstream jsonl_;
  std::unique_ptr<EventWriter> events_;
  // For the ETA: wall time over the steps logged so far, evaluation pauses included.
  double start_s_ = -1.0;
  int64_t start_step_ = 0;
  double last_draw_s_ = -1.0;
};

}  // namespace tessera::engine
