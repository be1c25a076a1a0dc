// Benchmark (not a test): pipeline parallelism on thread ranks of one OpenMP thread each.
//
// 1. The bubble: a few steps of a small model (compute well above the transfers) with
//    training.trace_file set; the traced step's Chrome trace is read back (read_chrome_trace)
//    and compute_bubble gives the measured idle share of the forward/backward window, printed
//    beside the formulas ((p-1)/m over the busy time, (p-1)/(m+p-1) of the makespan; with v
//    chunks (p-1)/(v m) and (p-1)/(v m+p-1)) and simulate()'s figure at backward = 2 forward.
//    GPipe, 1F1B and interleaved 1F1B (v = 2) at p = 2 and p = 4 (4 ranks on however many
//    cores there are: oversubscribed on 2). Each case runs a few times; each rank's thread CPU
//    time over its compute spans' wall time says how much of a core it got while busy, and of
//    the runs whose worst rank got within 0.05 of the best run's, the median bubble is kept
//    (the machines are shared: other work shows as a share below 1 at p = 2).
//    Also per case: the mean forward and backward spans, the sends' copy time and the hand-off
//    to a waiting receiver (pairing sends with receives on one clock), the trace origins' skew.
// 2. Activations per pipeline rank at m = 8: the stage's activation bytes (one slot per live
//    micro-batch: GPipe m, 1F1B p - s; interleaved, live and allocated) and each rank's
//    tracked peaks (MemoryTracker).
// 3. A bigger model (gpt2-350M) at PP = 2 against DP = 2 and TP = 2 on 2 ranks, the same
//    global batch (micro-batches of 1 x seq, 4 sequences per step), and PP with the blocks
//    split by FLOPs (the last stage also runs the head): median step time, the losses against
//    DP's, PP's traced bubble, each rank's CPU time over step time and tracked memory.
//
//   build/bench/bench_pp
//   build/bench/bench_pp --parts bubble,memory --bubble-m 2,4,8   (the small model only)
#include <fmt/format.h>
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "bench/bench_data.h"
#include "parallel/comm/thread_group.h"
#include "parallel/pp/schedule.h"
#include "runtime/core/logging.h"
#include "runtime/core/memory_stats.h"
#include "runtime/engine/trace.h"
#include "runtime/engine/trainer.h"

namespace {

using namespace tessera;
namespace pp = parallel::pp;

double mib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= s.size()) {
    const size_t comma = std::min(s.find(',', at), s.size());
    if (comma > at) out.push_back(s.substr(at, comma - at));
    at = comma + 1;
  }
  return out;
}

std::vector<int> int_list(const std::string& s) {
  std::vector<int> out;
  for (const std::string& x : split_list(s)) out.push_back(std::stoi(x));
  return out;
}

// The CPU's /proc/cpuinfo model name and the 16-bit matmul flags that decide the GEMM paths.
std::string cpu_line() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model = "?", flags;
  while (std::getline(in, line)) {
    if (model == "?" && line.rfind("model name", 0) == 0) model = line.substr(line.find(':') + 2);
    if (flags.empty() && line.rfind("flags", 0) == 0) {
      flags = " " + line.substr(line.find(':') + 1) + " ";
    }
  }
  const auto has = [&](const char* f) {
    return flags.find(" " + std::string(f) + " ") != std::string::npos ? "yes" : "no";
  };
  return fmt::format("CPU: {} ({} cores online); avx512f {}, avx512_bf16 {}, amx_bf16 {}", model,
                     omp_get_num_procs(), has("avx512f"), has("avx512_bf16"), has("amx_bf16"));
}

// What one pipeline run records per rank.
struct RankRecord {
  int64_t activation_bytes = 0;  // model().activation_bytes() after construction
  int slots = 0;                 // slots_needed(its program)
  int allocated_slots = 0;       // what the trainer allocates: each chunk's own peak, summed
  MemorySnapshot memory;         // tracked from before the trainer exists
  // The trace's time 0 on this rank: the engine's sync_origin sets each rank's own (a barrier,
  // then now), so thread ranks' origins differ by how late each left the barrier.
  engine::TraceRecorder::Clock::time_point origin;
};

struct PipeCase {
  std::string schedule;
  int p = 2, v = 1, m = 1;
  std::string name() const { return v > 1 ? fmt::format("{} v={}", schedule, v) : schedule; }
};

struct PipeResult {
  std::vector<double> step_ms;  // rank 0, every step (the warm-up first)
  std::vector<RankRecord> ranks;
  engine::BubbleStats bubble;
  double bubble_lo = 0, bubble_hi = 0;     // over all runs of the case (this is the kept one)
  double load = 0;                         // the load average after it
  double forward_us = 0, backward_us = 0;  // all ranks' spans of the traced step, summed
  int forwards = 0, backwards = 0;
  std::vector<double> send_ms, recv_ms;  // per rank, the traced step's send and recv spans
  // Per rank, over the traced step: the thread's CPU time (one OpenMP thread runs on the rank's
  // own thread) over its compute spans' wall time, the share of a core it got while busy.
  std::vector<double> cpu_ms, core_share;
  // Transfers of the traced step: a send span's mean (the copy into the link's buffer and
  // the post); where the receiver was already waiting (its recv began first), from the send's
  // begin to the receive's end (the hand-off to a blocked rank); else the receive's span
  // (taking data already sent).
  double send_span_ms = 0;
  std::vector<double> handoff_waiting_ms, handoff_ready_ms;
  // The largest distance of a rank's trace origin from rank 0's, and the bubble with every
  // rank's spans put on rank 0's clock (the transfers above are paired on it).
  double origin_skew_ms = 0;
  double bubble_on_one_clock = 0;
};

// Pairs each send of a traced step with its receive by kind, micro-batch and virtual stage
// (an activation goes from virtual stage k to k + 1, a gradient to k - 1) and records the
// hand-off times in r.
void pair_transfers(const std::vector<std::vector<engine::TraceSpan>>& spans, int p,
                    PipeResult& r) {
  struct Key {
    bool activation;
    int micro_batch, virtual_stage;
    bool operator<(const Key& o) const {
      return std::tie(activation, micro_batch, virtual_stage) <
             std::tie(o.activation, o.micro_batch, o.virtual_stage);
    }
  };
  std::map<Key, const engine::TraceSpan*> recvs;  // by the receiver's virtual stage
  std::vector<std::pair<Key, const engine::TraceSpan*>> sends;
  for (size_t rank = 0; rank < spans.size(); ++rank) {
    for (const engine::TraceSpan& s : spans[rank]) {
      const bool send = s.category == engine::kTraceSend, recv = s.category == engine::kTraceRecv;
      if (!send && !recv) continue;
      const bool activation = s.name.find("activation") != std::string::npos;
      const int k = pp::virtual_stage(static_cast<int>(rank), std::max(0, s.chunk), p);
      if (recv) recvs[{activation, s.micro_batch, k}] = &s;
      if (send) sends.push_back({{activation, s.micro_batch, activation ? k + 1 : k - 1}, &s});
    }
  }
  double send_us = 0;
  for (const auto& [key, s] : sends) {
    send_us += s->duration_us;
    const auto it = recvs.find(key);
    if (it == recvs.end()) continue;
    const engine::TraceSpan& rv = *it->second;
    if (rv.begin_us <= s->begin_us) {
      r.handoff_waiting_ms.push_back((rv.begin_us + rv.duration_us - s->begin_us) * 1e-3);
    } else {
      r.handoff_ready_ms.push_back(rv.duration_us * 1e-3);
    }
  }
  r.send_span_ms = sends.empty() ? 0 : send_us * 1e-3 / static_cast<double>(sends.size());
}

double thread_cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

// The 1-minute load average (other work on the machine skews every figure here).
double load_average() {
  std::ifstream in("/proc/loadavg");
  double load = -1;
  in >> load;
  return load;
}

// One pipeline configuration on p thread ranks: `steps` steps, step `trace_step` traced.
PipeResult run_pipeline(const engine::TrainConfig& base, const PipeCase& c, int steps,
                        int trace_step, const std::string& trace_path) {
  engine::TrainConfig cfg = base;
  cfg.pipeline_parallel = c.p;
  cfg.virtual_pipeline = c.v;
  cfg.pipeline_schedule = c.schedule;
  cfg.gradient_accumulation_steps = c.m;
  cfg.steps = steps;
  cfg.trace_file = trace_path;
  cfg.trace_step = trace_step;
  std::filesystem::remove(trace_path);
  PipeResult r;
  r.ranks.resize(c.p);
  r.cpu_ms.assign(c.p, 0.0);
  parallel::spawn_ranks(c.p, [&](parallel::ProcessGroup& group) {
    omp_set_num_threads(1);
    MemoryTracker tracker;
    RankRecord& mine = r.ranks[group.rank()];
    {
      ScopedTracker scoped(tracker);
      engine::Trainer trainer(cfg, &group);
      mine.activation_bytes = trainer.model().activation_bytes();
      const pp::StageProgram& program = trainer.schedule().programs[trainer.pp_rank()];
      mine.slots = pp::slots_needed(program);
      for (int k = 0; k < trainer.model().num_stages(); ++k) {
        mine.allocated_slots += std::max(1, pp::slots_needed(program, k));
      }
      for (int i = 0; i < steps; ++i) {
        const double cpu = thread_cpu_ms();
        const engine::StepStats st = trainer.step();
        if (i + 1 == trace_step) r.cpu_ms[group.rank()] = thread_cpu_ms() - cpu;
        if (group.rank() == 0) r.step_ms.push_back(st.ms);
      }
      mine.origin = trainer.trace().origin();
    }
    mine.memory = tracker.snapshot();
  });
  if (trace_step < 1 || trace_step > steps) return r;
  auto spans = engine::read_chrome_trace(trace_path);
  r.bubble = engine::compute_bubble(spans);
  // Thread ranks share steady_clock: shift each rank's spans onto rank 0's origin.
  for (size_t rank = 0; rank < spans.size() && rank < r.ranks.size(); ++rank) {
    const int64_t shift = std::chrono::duration_cast<std::chrono::microseconds>(
                              r.ranks[rank].origin - r.ranks[0].origin)
                              .count();
    r.origin_skew_ms = std::max(r.origin_skew_ms, std::abs(shift) * 1e-3);
    for (engine::TraceSpan& s : spans[rank]) s.begin_us += shift;
  }
  r.bubble_on_one_clock = engine::compute_bubble(spans).mean;
  r.send_ms.assign(spans.size(), 0.0);
  r.recv_ms.assign(spans.size(), 0.0);
  r.core_share.assign(spans.size(), 0.0);
  for (size_t rank = 0; rank < spans.size(); ++rank) {
    double compute_us = 0;
    for (const engine::TraceSpan& s : spans[rank]) {
      if (s.category == engine::kTraceForward || s.category == engine::kTraceBackward ||
          s.category == engine::kTraceOptimizer) {
        compute_us += s.duration_us;
      }
      if (s.category == engine::kTraceForward) {
        r.forward_us += s.duration_us;
        ++r.forwards;
      } else if (s.category == engine::kTraceBackward) {
        r.backward_us += s.duration_us;
        ++r.backwards;
      } else if (s.category == engine::kTraceSend) {
        r.send_ms[rank] += s.duration_us * 1e-3;
      } else if (s.category == engine::kTraceRecv) {
        r.recv_ms[rank] += s.duration_us * 1e-3;
      }
    }
    if (rank < r.cpu_ms.size() && compute_us > 0) {
      r.core_share[rank] = r.cpu_ms[rank] * 1e3 / compute_us;
    }
  }
  pair_transfers(spans, c.p, r);
  return r;
}

std::string join_per_rank(const std::vector<double>& v, const char* fmt_one, double scale = 1) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i > 0) out += " / ";
    out += fmt::format(fmt::runtime(fmt_one), v[i] * scale);
  }
  return out;
}

// Part 3: one setup of the bigger model on 2 thread ranks.
struct ModelSetup {
  std::string name;
  int pp = 1, tp = 1, accum = 1;
  std::string schedule = "1f1b";
  std::string partition = "uniform";
};

struct ModelResult {
  std::vector<double> ms;            // rank 0, timed steps
  std::vector<double> cpu_share[2];  // per rank and timed step: thread CPU time / step time
  std::vector<double> losses;        // rank 0, every step of round 0
  MemorySnapshot memory[2];
  engine::BubbleStats bubble;  // PP only: the first timed step's trace
  bool traced = false;
  double load = 0;  // the load average after the last round
};

void run_model_setup(const engine::TrainConfig& base, const ModelSetup& s, int warmup, int steps,
                     bool first_round, const std::string& trace_path, ModelResult& r) {
  engine::TrainConfig c = base;
  c.pipeline_parallel = s.pp;
  c.tensor_parallel = s.tp;
  c.pipeline_schedule = s.schedule;
  c.pipeline_partition = s.partition;
  c.gradient_accumulation_steps = s.accum;
  c.steps = warmup + steps;
  if (s.pp > 1 && first_round) {
    c.trace_file = trace_path;
    c.trace_step = warmup + 1;
    std::filesystem::remove(trace_path);
  }
  parallel::spawn_ranks(2, [&](parallel::ProcessGroup& group) {
    omp_set_num_threads(1);
    MemoryTracker tracker;
    {
      ScopedTracker scoped(tracker);
      engine::Trainer trainer(c, &group);
      for (int i = 0; i < warmup + steps; ++i) {
        const double cpu = thread_cpu_ms();
        const engine::StepStats st = trainer.step();
        if (i >= warmup) r.cpu_share[group.rank()].push_back((thread_cpu_ms() - cpu) / st.ms);
        if (group.rank() != 0) continue;
        if (first_round) r.losses.push_back(st.loss);
        if (i >= warmup) r.ms.push_back(st.ms);
      }
    }
    r.memory[group.rank()] = tracker.snapshot();
  });
  r.load = load_average();
  if (!c.trace_file.empty()) {
    r.bubble = engine::compute_bubble(engine::read_chrome_trace(trace_path));
    r.traced = true;
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pipeline parallelism on thread ranks: bubble, activations, PP against DP and TP"};
  std::string parts = "bubble,memory,model";
  std::string bubble_m = "2,4,8", bubble_m4 = "4,8";
  int layers = 8, embd = 256, heads = 8, vocab = 256, batch = 4, seq = 128;
  int pipe_steps = 3, bubble_rounds = 3;
  std::string big = "gpt2-350M", big_partition;
  int big_seq = 128, big_sequences = 4, warmup = 1, steps = 3, rounds = 1;
  app.add_option("--parts", parts, "bubble, memory, model (comma-separated)")
      ->capture_default_str();
  app.add_option("--bubble-m", bubble_m, "micro-batches at p = 2")->capture_default_str();
  app.add_option("--bubble-m4", bubble_m4, "micro-batches at p = 4 (\"\": skip p = 4)")
      ->capture_default_str();
  app.add_option("--layers", layers, "small model: n_layer")->capture_default_str();
  app.add_option("--embd", embd, "small model: n_embd")->capture_default_str();
  app.add_option("--heads", heads, "small model: n_head")->capture_default_str();
  app.add_option("--vocab", vocab, "small model: vocabulary")->capture_default_str();
  app.add_option("--batch", batch, "small model: micro-batch")->capture_default_str();
  app.add_option("--seq", seq, "small model: sequence length")->capture_default_str();
  app.add_option("--pipe-steps", pipe_steps, "small model: steps per case (step 2 traced)")
      ->capture_default_str();
  app.add_option("--bubble-rounds", bubble_rounds,
                 "small model: runs per case (the least disturbed runs' median is printed)")
      ->capture_default_str();
  app.add_option("--model", big, "part 3: the preset")->capture_default_str();
  app.add_option("--model-partition", big_partition,
                 "part 3: the second PP row's blocks per stage (default: balanced by FLOPs)");
  app.add_option("--model-seq", big_seq, "part 3: sequence length")->capture_default_str();
  app.add_option("--model-sequences", big_sequences,
                 "part 3: sequences per step (micro-batches of 1; PP m, DP m/2 per rank)")
      ->capture_default_str();
  app.add_option("--warmup", warmup, "part 3: untimed steps first")->capture_default_str();
  app.add_option("--steps", steps, "part 3: timed steps per setup and round")
      ->capture_default_str();
  app.add_option("--rounds", rounds, "part 3: rounds over the setups")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  TS_CHECK(pipe_steps >= 2 && bubble_rounds >= 1 && steps >= 1 && warmup >= 0 && rounds >= 1 &&
               big_sequences % 2 == 0,
           "bench_pp: bad counts (pipe-steps >= 2, model-sequences even)");
  setenv("TESSERA_LOG_LEVEL", "warn", 0);
  init_logging();
  const std::vector<std::string> want = split_list(parts);
  const auto part = [&](const char* p) {
    return std::find(want.begin(), want.end(), p) != want.end();
  };
  const auto tmp = std::filesystem::temp_directory_path() / "tessera_bench_pp";
  std::filesystem::create_directories(tmp);
  std::printf("%s\n", cpu_line().c_str());
  std::fflush(stdout);

  // The small model of parts 1 and 2.
  engine::TrainConfig small;
  small.model = models::GPTConfig{layers, heads, embd, vocab, seq};
  small.micro_batch_size = batch;
  small.seq_len = seq;
  small.gradient_clipping = 1.0;
  small.threads = 1;
  bench::use_random_tokens(small, "tessera_bench_pp", static_cast<size_t>(batch) * seq * 64 + 1);

  std::vector<PipeCase> cases;
  for (const int m : int_list(bubble_m)) {
    cases.push_back({"gpipe", 2, 1, m});
    cases.push_back({"1f1b", 2, 1, m});
    if (m % 2 == 0) cases.push_back({"interleaved", 2, 2, m});
  }
  for (const int m : int_list(bubble_m4)) {
    cases.push_back({"gpipe", 4, 1, m});
    cases.push_back({"1f1b", 4, 1, m});
    if (m % 4 == 0 && layers >= 8) cases.push_back({"interleaved", 4, 2, m});
  }
  std::vector<PipeResult> results;
  if (part("bubble") || part("memory")) {
    for (const PipeCase& c : cases) {
      const std::string path =
          (tmp / fmt::format("trace_{}_p{}_v{}_m{}.json", c.schedule, c.p, c.v, c.m)).string();
      // Runs of the same case; of the least disturbed by other work on the machine (those
      // whose least-served rank got within 0.05 of the best run's share of a core while busy:
      // often all of them), the one with the median bubble is kept.
      std::vector<PipeResult> tries;
      for (int round = 0; round < bubble_rounds; ++round) {
        tries.push_back(run_pipeline(small, c, pipe_steps, /*trace_step=*/2, path));
        tries.back().load = load_average();
      }
      const auto least_share = [](const PipeResult& r) {
        return r.core_share.empty() ? 0.0
                                    : *std::min_element(r.core_share.begin(), r.core_share.end());
      };
      double best = 0;
      for (const PipeResult& t : tries) best = std::max(best, least_share(t));
      std::vector<const PipeResult*> served;
      for (const PipeResult& t : tries) {
        if (least_share(t) >= best - 0.05) served.push_back(&t);
      }
      std::sort(served.begin(), served.end(), [](const PipeResult* a, const PipeResult* b) {
        return a->bubble.mean < b->bubble.mean;
      });
      PipeResult kept = *served[served.size() / 2];
      kept.bubble_lo = kept.bubble_hi = kept.bubble.mean;
      for (const PipeResult& t : tries) {
        kept.bubble_lo = std::min(kept.bubble_lo, t.bubble.mean);
        kept.bubble_hi = std::max(kept.bubble_hi, t.bubble.mean);
      }
      results.push_back(std::move(kept));
    }
  }

  if (part("bubble")) {
    std::printf(
        "\n1. Pipeline bubble, small model (L=%d, C=%d, %d heads, vocab %d, %.2fM params), "
        "micro-batch %d x %d, f32, one thread rank per stage x 1 OpenMP thread (p = 4: 4 ranks "
        "on %d cores, oversubscribed), step 2 of %d traced\n",
        layers, embd, heads, vocab, small.model.num_params() / 1e6, batch, seq, omp_get_num_procs(),
        pipe_steps);
    std::printf(
        "measured: compute_bubble over the traced step (idle share of the forward/backward "
        "window, mean over ranks): of %d runs, the median of those whose least-served rank got "
        "within 0.05 of the best run's core share (all runs' range in brackets); "
        "over the busy time: b/(1-b)\n",
        bubble_rounds);
    std::printf(
        "| schedule | p | m | ms/step, step 2 (traced) / last | measured bubble (range) | per "
        "rank | (p-1)/(vm+p-1) | simulate f=1 b=2 | measured / busy | (p-1)/(vm) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n");
    double sim_gap = 0;  // simulate at the measured B/F against f=1 b=2, the largest difference
    for (size_t i = 0; i < cases.size(); ++i) {
      const PipeCase& c = cases[i];
      const PipeResult& r = results[i];
      const pp::Schedule sched = pp::make_schedule(c.schedule, c.p, c.m, c.v);
      const double f = r.forward_us / std::max(1, r.forwards);
      const double b = r.backward_us / std::max(1, r.backwards);
      const double bf = f > 0 ? b / f : 0;
      const pp::Timeline ideal = pp::simulate(sched, 1, 2);
      const pp::Timeline at_measured =
          pp::simulate(sched, 20, std::max(1, static_cast<int>(std::lround(20 * bf))));
      sim_gap = std::max(sim_gap, std::abs(at_measured.bubble_fraction - ideal.bubble_fraction));
      const double vm = static_cast<double>(c.v) * c.m;
      const double meas = r.bubble.mean;
      std::printf(
          "| %s | %d | %d | %.0f / %.0f | %.3f (%.3f-%.3f) | %s | %.3f | %.3f | %.3f | %.3f |\n",
          c.name().c_str(), c.p, c.m, r.step_ms.at(1), r.step_ms.back(), meas, r.bubble_lo,
          r.bubble_hi, join_per_rank(r.bubble.per_rank, "{:.2f}").c_str(),
          (c.p - 1) / (vm + c.p - 1), ideal.bubble_fraction, meas / (1 - meas), (c.p - 1) / vm);
    }
    std::printf(
        "simulate at each case's measured B/F (below; forward 20, backward round(20 B/F)) "
        "differs from f=1 b=2 by at most %.4f over these cases.\n",
        sim_gap);
    std::printf(
        "\nThe same runs: spans and transfers of the traced step\n"
        "| schedule | p | m | F, B ms (B/F) | core share while busy, per rank | send span, ms | "
        "receiver waiting: send begin to recv end, median ms (n) | data there first: recv "
        "span, median ms (n) | recv spans, ms per rank | trace origins' skew, ms | bubble on "
        "one clock | load avg |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < cases.size(); ++i) {
      const PipeCase& c = cases[i];
      const PipeResult& r = results[i];
      const double f = r.forward_us / std::max(1, r.forwards);
      const double b = r.backward_us / std::max(1, r.backwards);
      std::printf(
          "| %s | %d | %d | %.0f, %.0f (%.2f) | %s | %.2f | %.2f (%zu) | %.2f (%zu) | %s | %.2f | "
          "%.3f | %.1f |\n",
          c.name().c_str(), c.p, c.m, f * 1e-3, b * 1e-3, f > 0 ? b / f : 0,
          join_per_rank(r.core_share, "{:.2f}").c_str(), r.send_span_ms,
          median(r.handoff_waiting_ms), r.handoff_waiting_ms.size(), median(r.handoff_ready_ms),
          r.handoff_ready_ms.size(), join_per_rank(r.recv_ms, "{:.0f}").c_str(), r.origin_skew_ms,
          r.bubble_on_one_clock, r.load);
    }
    std::printf(
        "F, B: mean forward and backward span (one chunk's under interleaving; the last stage's "
        "backward includes the loss), all ranks. Core share: the rank thread's CPU time in the "
        "traced step over its forward+backward+optimizer spans' wall time (1.00: a whole core "
        "while busy). Receiver waiting: its recv began before the send did; recv spans, ms per "
        "rank: their sum, the waits for the neighbour included. Trace origins' skew: the "
        "engine's sync_origin gives every rank its own time 0 (after a barrier); the transfer "
        "columns and 'bubble on one clock' put all ranks on rank 0's (thread ranks share "
        "steady_clock).\n");
    std::fflush(stdout);
  }

  if (part("memory")) {
    std::printf(
        "\n2. Activations per pipeline rank at m = 8 (the same small model and micro-batch): "
        "Stage activation bytes after construction (slots = live micro-batches), and the "
        "tracked peaks over %d steps (MiB)\n",
        pipe_steps);
    std::printf(
        "| p | rank | GPipe MiB (slots) | 1F1B MiB (slots) | GPipe / 1F1B | m / (p-s) | "
        "interleaved v=2 MiB (slots live at the peak; allocated, chunk stores summed) | tracked "
        "peak activations GPipe / 1F1B | tracked comm "
        "GPipe / 1F1B | tracked total GPipe / 1F1B |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n");
    for (const int p : {2, 4}) {
      const PipeResult *g = nullptr, *o = nullptr, *iv = nullptr;
      for (size_t i = 0; i < cases.size(); ++i) {
        if (cases[i].p != p || cases[i].m != 8) continue;
        if (cases[i].schedule == "gpipe") g = &results[i];
        if (cases[i].schedule == "1f1b") o = &results[i];
        if (cases[i].schedule == "interleaved") iv = &results[i];
      }
      if (g == nullptr || o == nullptr) continue;
      for (int s = 0; s < p; ++s) {
        const RankRecord &rg = g->ranks[s], &ro = o->ranks[s];
        const std::string inter =
            iv != nullptr ? fmt::format("{:.1f} ({}; {})", mib(iv->ranks[s].activation_bytes),
                                        iv->ranks[s].slots, iv->ranks[s].allocated_slots)
                          : "-";
        std::printf(
            "| %d | %d | %.1f (%d) | %.1f (%d) | %.2f | %.2f | %s | %.1f / %.1f | %.1f / %.1f | "
            "%.1f / %.1f |\n",
            p, s, mib(rg.activation_bytes), rg.slots, mib(ro.activation_bytes), ro.slots,
            static_cast<double>(rg.activation_bytes) / std::max<int64_t>(1, ro.activation_bytes),
            8.0 / (p - s), inter.c_str(), mib(rg.memory.peak_of(MemCategory::Activations)),
            mib(ro.memory.peak_of(MemCategory::Activations)),
            mib(rg.memory.peak_of(MemCategory::Comm)), mib(ro.memory.peak_of(MemCategory::Comm)),
            mib(rg.memory.total_peak), mib(ro.memory.total_peak));
      }
    }
    std::fflush(stdout);
  }

  if (part("model")) {
    engine::TrainConfig cfg = bench::step_config(big, 1, big_seq);
    cfg.threads = 1;
    const int n = big_sequences;
    const size_t tokens = static_cast<size_t>(big_seq) * n * (warmup + steps + 1) + 1;
    bench::use_random_tokens(cfg, "tessera_bench_pp_model", tokens);
    // The last stage also runs the head (2 C V FLOPs a token against a block's ~24 C^2), so a
    // balanced split gives the first stage about V / (12 C) blocks more.
    if (big_partition.empty()) {
      const int L = cfg.model.n_layer;
      const double head_blocks = cfg.model.vocab_size / (12.0 * cfg.model.n_embd);
      const int first = std::clamp(static_cast<int>(std::lround((L + head_blocks) / 2)), 1, L - 1);
      big_partition = fmt::format("{},{}", first, L - first);
    }
    std::vector<ModelSetup> setups = {
        {fmt::format("PP=2 1F1B, m={}", n), 2, 1, n},
        {fmt::format("DP=2 ZeRO 0, accumulation {}", n / 2), 1, 1, n / 2},
        {fmt::format("TP=2, accumulation {}", n), 1, 2, n},
        {fmt::format("PP=2 1F1B, m={}, blocks {}", n, big_partition), 2, 1, n},
    };
    setups.back().partition = big_partition;
    std::vector<ModelResult> res(setups.size());
    for (int round = 0; round < rounds; ++round) {
      for (size_t i = 0; i < setups.size(); ++i) {
        const std::string trace_path = (tmp / fmt::format("trace_model_{}.json", i)).string();
        run_model_setup(cfg, setups[i], warmup, steps, round == 0, trace_path, res[i]);
      }
    }
    std::printf(
        "\n3. %s (%.1fM params) on 2 thread ranks x 1 OpenMP thread, f32, %d sequences x %d "
        "tokens per optimizer step in every setup (micro-batches of 1 x %d), median of %d "
        "round(s) x %d steps after %d warm-up\n",
        big.c_str(), cfg.model.num_params() / 1e6, n, big_seq, big_seq, rounds, steps, warmup);
    std::printf(
        "| setup | ms/step (median) | min-max | vs DP | tokens/s | max |loss - DP loss| | "
        "bubble (traced step) | CPU time / step time, rank 0 / 1 | load avg |\n"
        "|---|---|---|---|---|---|---|---|---|\n");
    const double dp_ms = median(res[1].ms);
    for (size_t i = 0; i < setups.size(); ++i) {
      const ModelResult& r = res[i];
      const auto [lo, hi] = std::minmax_element(r.ms.begin(), r.ms.end());
      double diff = 0;
      for (size_t k = 0; k < r.losses.size() && k < res[1].losses.size(); ++k) {
        diff = std::max(diff, std::abs(r.losses[k] - res[1].losses[k]));
      }
      const double ms = median(r.ms);
      const std::string bubble = r.traced ? fmt::format("{:.3f} ({})", r.bubble.mean,
                                                        join_per_rank(r.bubble.per_rank, "{:.2f}"))
                                          : "-";
      std::printf("| %s | %.0f | %.0f-%.0f | %.2fx | %.0f | %.1e | %s | %.2f / %.2f | %.1f |\n",
                  setups[i].name.c_str(), ms, *lo, *hi, ms / dp_ms,
                  static_cast<double>(n) * big_seq / (ms / 1e3), diff, bubble.c_str(),
                  median(r.cpu_share[0]), median(r.cpu_share[1]), r.load);
    }
    std::printf("\nTracked peak per rank (MiB, rank 0 / rank 1), from before the trainer exists\n");
    std::printf(
        "| setup | params | grads | optimizer | activations | comm | other | total |\n"
        "|---|---|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < setups.size(); ++i) {
      const MemorySnapshot* m = res[i].memory;
      const auto both = [&](MemCategory c) {
        return fmt::format("{:.1f} / {:.1f}", mib(m[0].peak_of(c)), mib(m[1].peak_of(c)));
      };
      std::printf("| %s | %s | %s | %s | %s | %s | %s | %.1f / %.1f |\n", setups[i].name.c_str(),
                  both(MemCategory::Params).c_str(), both(MemCategory::Grads).c_str(),
                  both(MemCategory::Optimizer).c_str(), both(MemCategory::Activations).c_str(),
                  both(MemCategory::Comm).c_str(), both(MemCategory::Other).c_str(),
                  mib(m[0].total_peak), mib(m[1].total_peak));
    }
    std::fflush(stdout);
  }
  return 0;
}
