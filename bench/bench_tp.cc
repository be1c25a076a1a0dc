// Benchmark (not a test): tensor parallelism (Megatron's, t = 2, with and without sequence
// parallelism) against data parallelism (ZeRO stage 0, and stage 1, whose ranks update half
// the model each as TP's do) on the same ranks and the same global batch, one core per
// thread rank. Per setup: the median step time after the warm-up, the
// bytes each rank's collectives move per step (parallel/comm/counting_group.h, ring model)
// in the tensor-parallel group apart, beside what the model's code should send, and each
// rank's tracked memory peak by category. Then the thread backend's collectives at the
// message size tensor parallelism sends (b s h f32 elements), and what DP pays that TP does
// not (the gradient all-reduce, AdamW over the whole model), beside the measured difference.
//
// Each rank's time inside collectives (the call plus the wait on its Work: data movement,
// hand-off to the progress thread and waiting for the peer) is measured by a wrapper group
// here, per group as the Trainer splits them.
//
// Setups interleave within a round and rounds repeat, so machine noise hits all alike. DP
// ranks take --batch sequences each; the TP group takes --batch x ranks, the same tokens
// (the data loader's windows make them the same sequences, so the losses must agree).
//
//   build/bench/bench_tp --models gpt2-124M,gpt2-350M --batch 1 --seq 128 --steps 3 --rounds 2
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "bench/bench_data.h"
#include "parallel/comm/counting_group.h"
#include "parallel/comm/thread_group.h"
#include "runtime/core/logging.h"
#include "runtime/core/memory_stats.h"
#include "runtime/engine/trainer.h"
#include "runtime/kernels/cpu_kernels.h"

namespace {

using namespace tessera;

using Clock = std::chrono::steady_clock;

int64_t ns_since(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t).count();
}

// A Work whose wait() adds the time it blocked to a counter.
class TimedWork final : public parallel::Work {
 public:
  TimedWork(parallel::WorkPtr inner, std::atomic<int64_t>& ns)
      : inner_(std::move(inner)), ns_(ns) {}
  bool is_completed() override { return inner_->is_completed(); }
  void wait(parallel::Timeout timeout) override {
    const auto t = Clock::now();
    inner_->wait(timeout);
    ns_ += ns_since(t);
  }

 private:
  parallel::WorkPtr inner_;
  std::atomic<int64_t>& ns_;
};

// Forwards to another group and adds up, per rank, the time spent in its collectives' calls
// and waits; split() returns a TimedGroup too (with its own count), as CountingGroup does.
class TimedGroup final : public parallel::ProcessGroup {
 public:
  explicit TimedGroup(parallel::ProcessGroup& inner) : inner_(inner) {}
  explicit TimedGroup(parallel::ProcessGroupPtr inner)
      : owned_(std::move(inner)), inner_(*owned_) {}

  double seconds() const { return static_cast<double>(ns_.load()) * 1e-9; }
  void reset() {
    ns_ = 0;
    for (auto& g : subgroups_) g->reset();
  }
  const std::vector<std::shared_ptr<TimedGroup>>& subgroups() const { return subgroups_; }

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string_view backend_name() const override { return inner_.backend_name(); }
  parallel::ProcessGroupPtr split(int color, int key) override {
    parallel::ProcessGroupPtr inner = inner_.split(color, key);
    if (inner == nullptr) return nullptr;
    subgroups_.push_back(std::make_shared<TimedGroup>(std::move(inner)));
    return subgroups_.back();
  }
  parallel::WorkPtr all_reduce(const void* send, void* recv, size_t count, DType dtype,
                               const parallel::AllreduceOptions& opts) override {
    return timed([&] { return inner_.all_reduce(send, recv, count, dtype, opts); });
  }
  parallel::WorkPtr reduce_scatter_v(const void* send, void* recv, std::span<const size_t> counts,
                                     DType dtype,
                                     const parallel::ReduceScatterOptions& opts) override {
    return timed([&] { return inner_.reduce_scatter_v(send, recv, counts, dtype, opts); });
  }
  parallel::WorkPtr all_gather_v(const void* send, void* recv, std::span<const size_t> counts,
                                 DType dtype, const parallel::AllgatherOptions& opts) override {
    return timed([&] { return inner_.all_gather_v(send, recv, counts, dtype, opts); });
  }
  parallel::WorkPtr broadcast(void* buf, size_t count, DType dtype,
                              const parallel::BroadcastOptions& opts) override {
    return timed([&] { return inner_.broadcast(buf, count, dtype, opts); });
  }
  parallel::WorkPtr reduce(const void* send, void* recv, size_t count, DType dtype,
                           const parallel::ReduceOptions& opts) override {
    return timed([&] { return inner_.reduce(send, recv, count, dtype, opts); });
  }
  parallel::WorkPtr send(const void* buf, size_t count, DType dtype, int dst,
                         const parallel::SendRecvOptions& opts) override {
    return timed([&] { return inner_.send(buf, count, dtype, dst, opts); });
  }
  parallel::WorkPtr recv(void* buf, size_t count, DType dtype, int src,
                         const parallel::SendRecvOptions& opts) override {
    return timed([&] { return inner_.recv(buf, count, dtype, src, opts); });
  }
  parallel::WorkPtr barrier(const parallel::BarrierOptions& opts) override {
    return timed([&] { return inner_.barrier(opts); });
  }
  void abort(std::string_view reason) override { inner_.abort(reason); }

 private:
  template <typename F>
  parallel::WorkPtr timed(F&& issue) {
    const auto t = Clock::now();
    parallel::WorkPtr work = issue();
    ns_ += ns_since(t);
    return std::make_shared<TimedWork>(std::move(work), ns_);
  }

  parallel::ProcessGroupPtr owned_;
  parallel::ProcessGroup& inner_;
  std::atomic<int64_t> ns_{0};
  std::vector<std::shared_ptr<TimedGroup>> subgroups_;
};

struct Setup {
  std::string name;
  int tp;
  bool sp;
  int zero_stage;
};

struct Result {
  std::vector<double> ms;
  std::vector<double> losses;  // round 0's, warm-up included
  int64_t total_bytes = 0, tp_bytes = 0;
  std::vector<double> comm_ms[2];  // per step, ranks 0 and 1: in every collective
  MemorySnapshot memory[2];        // ranks 0 and 1 (from before the trainer exists)
};

double mib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// The bytes per rank per step that the TP group's collectives should move in the ring model
// (CountingGroup's): an all-reduce of n elements counts 2 (t-1)/t n 4 bytes, an all-gather or
// reduce-scatter of a buffer of n elements (t-1)/t n 4, so at t = 2 an all-reduce counts its
// payload exactly. From models/stage.cc:
//   TP: forward, per layer, the attention and MLP row-parallel outputs (2 all-reduces of BTC);
//       backward, per layer, the QKV and fc input gradients (2 all-reduces of BTC); the
//       embedding's sum (1, forward) and the head's input gradient (1, backward); the
//       cross-entropy statistics (all-reduces of BT and 2 BT).
//   SP: per layer, forward 2 all-gathers (LayerNorm outputs) + 2 reduce-scatters (row-parallel
//       outputs); backward 2 all-gathers of the output gradients, 2 all-gathers of the
//       LayerNorm outputs again (not kept gathered) and 2 reduce-scatters of the input
//       gradients: 10 of BTC; outside the layers 4 (embedding reduce-scatter and its
//       gradient's all-gather, the final LayerNorm's gather and its gradient's
//       reduce-scatter); all-reduces of the LayerNorm gains' gradients (2 C per LayerNorm,
//       2 L + 1 of them) and of the cross-entropy statistics.
//   Both: the gradient norm's all-gather of one f64 per rank.
struct Expected {
  double bytes = 0;
  std::string formula;
};

Expected expected_tp_bytes(const models::GPTConfig& m, int t, bool sp, int64_t B, int64_t T) {
  const double L = m.n_layer, C = m.n_embd, BT = static_cast<double>(B * T), BTC = BT * C;
  const double ar = 2.0 * (t - 1) / t, ag = 1.0 * (t - 1) / t;
  const double norm = ag * 8.0 * t;
  Expected e;
  if (!sp) {
    e.bytes = ar * 4.0 * ((4 * L + 2) * BTC + 3 * BT) + norm;
    e.formula = "2(t-1)/t x 4 x ((4L+2) BTC + 3 BT)";
  } else {
    e.bytes = ag * 4.0 * (10 * L + 4) * BTC + ar * 4.0 * ((2 * L + 1) * 2 * C + 3 * BT) + norm;
    e.formula = "(t-1)/t x 4 x (10L+4) BTC + 2(t-1)/t x 4 x ((2L+1) 2C + 3 BT)";
  }
  return e;
}

// One setup on `ranks` thread ranks of one core each: warm-up steps, then timed ones.
void run_setup(const engine::TrainConfig& base, const Setup& s, int ranks, int warmup, int steps,
               bool first_round, Result& r) {
  engine::TrainConfig c = base;
  c.tensor_parallel = s.tp;
  c.sequence_parallel = s.sp;
  c.zero.stage = s.zero_stage;
  c.micro_batch_size = base.micro_batch_size * s.tp;  // the same global batch
  c.steps = warmup + steps;
  parallel::spawn_ranks(ranks, [&](parallel::ProcessGroup& group) {
    omp_set_num_threads(1);
    MemoryTracker tracker;
    {
      ScopedTracker scoped(tracker);
      parallel::CountingGroup counted(group);
      TimedGroup timed(counted);
      engine::Trainer trainer(c, &timed);
      for (int i = 0; i < warmup; ++i) {
        const double loss = trainer.step().loss;
        if (group.rank() == 0 && first_round) r.losses.push_back(loss);
      }
      counted.reset();
      for (int i = 0; i < steps; ++i) {
        timed.reset();
        const engine::StepStats st = trainer.step();
        double in_comm = timed.seconds();
        for (const auto& g : timed.subgroups()) in_comm += g->seconds();
        if (group.rank() < 2) r.comm_ms[group.rank()].push_back(in_comm * 1e3);
        if (group.rank() == 0) {
          r.ms.push_back(st.ms);
          if (first_round) r.losses.push_back(st.loss);
        }
      }
      if (group.rank() == 0) {
        r.total_bytes = counted.total_volume_bytes() / steps;
        if (s.tp > 1) {
          // Topology splits the world into the TP group first (then DP, then PP).
          const auto subgroups = counted.subgroups();
          TS_CHECK(!subgroups.empty() && subgroups[0]->size() == s.tp,
                   "expected the tensor-parallel group to be the world's first split");
          r.tp_bytes = subgroups[0]->total_volume_bytes() / steps;
        }
      }
    }
    if (group.rank() < 2) r.memory[group.rank()] = tracker.snapshot();
  });
}

// Mean seconds per call of a collective, every rank running the same count of calls.
double time_calls(parallel::ProcessGroup& g, int iters, const std::function<void()>& call) {
  for (int i = 0; i < 3; ++i) call();
  g.barrier()->wait();
  const auto t = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) call();
  g.barrier()->wait();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count() / iters;
}

struct CollectiveTimes {
  double all_reduce = 0, reduce_scatter = 0, all_gather = 0;  // seconds per call
};

// The thread backend at `count` f32 elements (the whole buffer: all-reduce's in and out, the
// gathered output of an all-gather, the input of a reduce-scatter).
CollectiveTimes time_collectives(int ranks, size_t count, int iters) {
  CollectiveTimes out;
  count = count / ranks * ranks;
  parallel::spawn_ranks(ranks, [&](parallel::ProcessGroup& g) {
    std::vector<float> send(count, 1.0f), recv(count, 0.0f);
    parallel::AllreduceOptions sum;
    CollectiveTimes mine;
    // Interleaved rounds, the best of each: the least disturbed by the other work here.
    mine.all_reduce = mine.reduce_scatter = mine.all_gather = 1e30;
    for (int round = 0; round < 3; ++round) {
      mine.all_reduce =
          std::min(mine.all_reduce, time_calls(g, iters, [&] {
                     g.all_reduce(send.data(), recv.data(), count, DType::F32, sum)->wait();
                   }));
      mine.reduce_scatter =
          std::min(mine.reduce_scatter, time_calls(g, iters, [&] {
                     g.reduce_scatter(send.data(), recv.data(), count / ranks, DType::F32)->wait();
                   }));
      mine.all_gather =
          std::min(mine.all_gather, time_calls(g, iters, [&] {
                     g.all_gather(send.data(), recv.data(), count / ranks, DType::F32)->wait();
                   }));
    }
    if (g.rank() == 0) out = mine;
  });
  return out;
}

// What data parallelism pays that tensor parallelism at t = ranks does not (or pays 1/t of),
// on all ranks at once as in a step: one all-reduce of a gradient bucket of `count` f32
// elements, and AdamW over `count` elements per rank. Seconds, the best of 3.
struct DpCosts {
  double all_reduce = 0, adamw = 0;
};

DpCosts time_dp_costs(int ranks, size_t count) {
  DpCosts out;
  parallel::spawn_ranks(ranks, [&](parallel::ProcessGroup& g) {
    omp_set_num_threads(1);
    DpCosts mine;
    {
      std::vector<float> send(count, 1e-3f), recv(count, 0.0f);
      parallel::AllreduceOptions sum;
      mine.all_reduce = 1e30;
      for (int i = 0; i < 3; ++i) {
        mine.all_reduce =
            std::min(mine.all_reduce, time_calls(g, 1, [&] {
                       g.all_reduce(send.data(), recv.data(), count, DType::F32, sum)->wait();
                     }));
      }
    }
    std::vector<float> params(count, 0.5f), grads(count, 1e-3f), m(count, 0.0f), v(count, 0.0f);
    kernels::cpu::AdamWParams a;
    a.weight_decay = 0.01f;
    mine.adamw = 1e30;
    for (int i = 0; i < 4; ++i) {
      a.step = i + 1;
      g.barrier()->wait();
      const auto t = std::chrono::steady_clock::now();
      kernels::cpu::adamw_update(params.data(), grads.data(), m.data(), v.data(),
                                 static_cast<int64_t>(count), a);
      const double sec =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
      if (i > 0) mine.adamw = std::min(mine.adamw, sec);  // the first touches the pages
    }
    if (g.rank() == 0) out = mine;
  });
  return out;
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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tensor parallelism against data parallelism on thread ranks"};
  std::string models_list = "gpt2-124M,gpt2-350M";
  int batch = 1, seq = 128, steps = 3, warmup = 1, rounds = 2, ranks = 2, iters = 50;
  bool skip_collectives = false;
  app.add_option("--models", models_list, "comma-separated presets")->capture_default_str();
  app.add_option("--batch", batch, "micro-batch per DP rank (the TP group takes batch x ranks)")
      ->capture_default_str();
  app.add_option("--seq", seq, "sequence length")->capture_default_str();
  app.add_option("--steps", steps, "timed steps per setup and round")->capture_default_str();
  app.add_option("--warmup", warmup, "untimed steps first")->capture_default_str();
  app.add_option("--rounds", rounds, "rounds over the setups")->capture_default_str();
  app.add_option("--ranks", ranks, "thread ranks (= t for the TP setups)")->capture_default_str();
  app.add_option("--iters", iters, "calls per collective timing")->capture_default_str();
  app.add_flag("--skip-collectives", skip_collectives, "only the training steps");
  CLI11_PARSE(app, argc, argv);
  TS_CHECK(steps >= 1 && rounds >= 1 && warmup >= 0 && ranks >= 2, "bench_tp: bad counts");
  setenv("TESSERA_LOG_LEVEL", "warn", 0);
  init_logging();

  const std::string n = std::to_string(ranks);
  // DP at stage 1 too: its ranks then update half the parameters each, as TP's do, with the
  // same all-reduced bytes as stage 0 (a reduce-scatter and an all-gather).
  enum { kDp0, kDp1, kTp, kSp };
  const std::vector<Setup> setups = {{"DP=" + n + ", ZeRO 0", 1, false, 0},
                                     {"DP=" + n + ", ZeRO 1", 1, false, 1},
                                     {"TP=" + n, ranks, false, 0},
                                     {"TP=" + n + " + SP", ranks, true, 0}};
  struct Message {
    std::string preset;
    int layers;
    size_t count;
    int64_t params, tp_params;  // per rank: DP (the whole model) and TP
    double dp_ms, dp1_ms, tp_ms, sp_ms;
  };
  std::vector<Message> messages;
  for (const std::string& preset : split_list(models_list)) {
    engine::TrainConfig cfg = bench::step_config(preset, batch, seq);
    cfg.threads = 1;
    const size_t tokens = static_cast<size_t>(batch) * seq * ranks * (warmup + steps + 1) + 1;
    bench::use_random_tokens(cfg, "tessera_bench_tp", tokens);
    const models::GPTConfig& m = cfg.model;
    const int64_t B = int64_t{batch} * ranks, T = seq;  // the TP group's micro-batch

    std::map<int, Result> results;
    for (int round = 0; round < rounds; ++round) {
      for (size_t i = 0; i < setups.size(); ++i) {
        run_setup(cfg, setups[i], ranks, warmup, steps, round == 0, results[static_cast<int>(i)]);
      }
    }

    const double psi = 4.0 * static_cast<double>(m.num_params());
    std::printf(
        "\n%s (%.1fM params, L=%d, h=%d), f32, %d thread ranks x 1 core, %d x %d tokens "
        "per DP rank (TP group: b=%lld, s=%d), %d rounds x %d steps after %d warm-up\n",
        preset.c_str(), m.num_params() / 1e6, m.n_layer, m.n_embd, ranks, batch, seq,
        static_cast<long long>(B), seq, rounds, steps, warmup);
    std::printf(
        "| setup | ms/step (median) | min-max | vs DP | tokens/s | ms/step in "
        "collectives, rank 0 / 1 | MB per rank per step (all) | of it TP group | expected "
        "TP | measured / expected | max |loss - DP loss| |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n");
    const double dp_ms = median(results[kDp0].ms);
    messages.push_back({preset, m.n_layer, static_cast<size_t>(B * T * m.n_embd), m.num_params(),
                        results[kTp].memory[0].peak_of(MemCategory::Params) / 4, dp_ms,
                        median(results[kDp1].ms), median(results[kTp].ms),
                        median(results[kSp].ms)});
    for (size_t i = 0; i < setups.size(); ++i) {
      const Result& r = results[static_cast<int>(i)];
      const auto [lo, hi] = std::minmax_element(r.ms.begin(), r.ms.end());
      double loss_diff = 0;
      for (size_t k = 0; k < r.losses.size(); ++k) {
        loss_diff = std::max(loss_diff, std::abs(r.losses[k] - results[kDp0].losses[k]));
      }
      char expected[64] = "-", ratio[32] = "-";
      if (setups[i].tp > 1) {
        const Expected e = expected_tp_bytes(m, setups[i].tp, setups[i].sp, B, T);
        std::snprintf(expected, sizeof expected, "%.2f", e.bytes / 1e6);
        std::snprintf(ratio, sizeof ratio, "%.4f", r.tp_bytes / e.bytes);
      } else {
        std::snprintf(expected, sizeof expected, "(2 Psi (N-1)/N = %.2f)",
                      2 * psi * (ranks - 1) / ranks / 1e6);
      }
      const double ms = median(r.ms);
      std::printf(
          "| %s | %.0f | %.0f-%.0f | %.2fx | %.0f | %.0f / %.0f | %.2f | %.2f | %s | %s | "
          "%.1e |\n",
          setups[i].name.c_str(), ms, *lo, *hi, ms / dp_ms, static_cast<double>(B * T) / (ms / 1e3),
          median(r.comm_ms[0]), median(r.comm_ms[1]), r.total_bytes / 1e6, r.tp_bytes / 1e6,
          expected, ratio, loss_diff);
    }
    std::printf(
        "expected TP: TP %s; SP %s (+ 8 t (t-1)/t for the gradient norm), "
        "BTC = %lld x %lld x %d\n",
        expected_tp_bytes(m, 2, false, B, T).formula.c_str(),
        expected_tp_bytes(m, 2, true, B, T).formula.c_str(), static_cast<long long>(B),
        static_cast<long long>(T), m.n_embd);

    std::printf(
        "\nTracked peak per rank (MiB, rank 0; total for ranks 0 / 1), from before the "
        "trainer exists\n");
    std::printf(
        "| setup | params | grads | optimizer | activations | comm | other | total "
        "rank 0 / 1 |\n|---|---|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < setups.size(); ++i) {
      const MemorySnapshot& s = results[static_cast<int>(i)].memory[0];
      const MemorySnapshot& s1 = results[static_cast<int>(i)].memory[1];
      std::printf("| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f / %.1f |\n",
                  setups[i].name.c_str(), mib(s.peak_of(MemCategory::Params)),
                  mib(s.peak_of(MemCategory::Grads)), mib(s.peak_of(MemCategory::Optimizer)),
                  mib(s.peak_of(MemCategory::Activations)), mib(s.peak_of(MemCategory::Comm)),
                  mib(s.peak_of(MemCategory::Other)), mib(s.total_peak), mib(s1.total_peak));
    }
    std::fflush(stdout);
  }

  if (skip_collectives) return 0;
  std::printf(
      "\nThread backend, %d ranks, at TP's message size (b s h f32): us per call (bus "
      "GB/s: all_reduce 2 (n-1)/n of the buffer, the others (n-1)/n)\n",
      ranks);
  std::printf(
      "| model | b s h elements (MiB) | all_reduce | reduce_scatter | all_gather | "
      "TP: (4L+2) all_reduce, ms/step | SP: (10L+4) gather/scatter, ms/step |\n"
      "|---|---|---|---|---|---|---|\n");
  for (const Message& msg : messages) {
    const CollectiveTimes t = time_collectives(ranks, msg.count, iters);
    const double gb = msg.count * 4.0 / 1e9, w = ranks;
    std::printf(
        "| %s | %zu (%.2f) | %.0f us (%.1f) | %.0f us (%.1f) | %.0f us (%.1f) | %.1f | "
        "%.1f |\n",
        msg.preset.c_str(), msg.count, msg.count * 4.0 / (1 << 20), t.all_reduce * 1e6,
        gb * 2 * (w - 1) / w / t.all_reduce, t.reduce_scatter * 1e6,
        gb * (w - 1) / w / t.reduce_scatter, t.all_gather * 1e6, gb * (w - 1) / w / t.all_gather,
        (4 * msg.layers + 2) * t.all_reduce * 1e3,
        (10 * msg.layers + 4) * (t.reduce_scatter + t.all_gather) / 2 * 1e3);
    std::fflush(stdout);
  }

  // DP's stage 0 all-reduces the gradients in buckets of reduce_bucket_size elements; timed
  // at one bucket and scaled (both are bandwidth-bound, linear in the bytes).
  const size_t bucket = static_cast<size_t>(engine::ZeroConfig{}.reduce_bucket_size);
  const DpCosts d = time_dp_costs(ranks, bucket);
  std::printf(
      "\nWhat DP pays that TP does not, %d ranks at once, 1 core each (timed at one "
      "gradient bucket of %zu f32, scaled to the model):\n",
      ranks, bucket);
  std::printf(
      "| model | gradient all_reduce, ms/step | AdamW over Psi, ms | over TP's share, ms | "
      "DP's extra (all_reduce + AdamW difference), ms | measured DP - TP, ms | DP - "
      "(TP+SP), ms | DP stage 0 - stage 1, ms |\n|---|---|---|---|---|---|---|---|\n");
  for (const Message& msg : messages) {
    const double per = 1e3 / static_cast<double>(bucket);
    const double ar = d.all_reduce * per * msg.params, aw = d.adamw * per * msg.params,
                 aw_tp = d.adamw * per * msg.tp_params;
    std::printf("| %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n", msg.preset.c_str(), ar,
                aw, aw_tp, ar + aw - aw_tp, msg.dp_ms - msg.tp_ms, msg.dp_ms - msg.sp_ms,
                msg.dp_ms - msg.dp1_ms);
  }
  return 0;
}
