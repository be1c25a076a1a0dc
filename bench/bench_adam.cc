// Benchmark (not a test): the CPU AdamW update against the memory bandwidth it is bound by
// (docs/PERFORMANCE.md, "CPU Adam").
//
// One update of --params parameters (default: gpt2-1.5B's 1,557,611,200), streamed through
// a working set of --chunk elements per array, far larger than the caches, so every pass
// comes from memory as in a real step. Variants, each over all --params elements:
//   - f32 on each vector path the CPU has (cpu_adam.h) and on the scalar rule, threaded
//     (the scalar rule is what adamw_update ran before the vector paths: GCC leaves that
//     loop scalar because std::sqrt may set errno);
//   - bf16 master-weight update (adamw_bf16, what adamw_update16 runs for bf16: bf16
//     gradient in, fp32 master, m, v updated, bf16 parameter out, one pass), the update of
//     a bf16 run, on each path;
//   - the memory roof: a loop with the f32 update's traffic (p, g, m, v read; p, m, v
//     written, 28 bytes per parameter) and one add per array, no arithmetic to wait on;
//     and the same for the bf16 traffic (26 bytes: g16 and p16 two bytes each).
// Each round runs every variant once, in turn (rounds interleave, so a drift of the shared
// machine hits all alike); the table is the median over --rounds with the range, in GB/s of
// the variant's traffic and as a fraction of the roof of the same traffic.
//
//   build/bench/bench_adam                      (1.5B parameters, 3 rounds, all cores)
//   build/bench/bench_adam --params 100000000 --rounds 5 --threads 1
#include <fmt/format.h>
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "runtime/core/logging.h"
#include "runtime/kernels/cpu_adam.h"
#include "runtime/kernels/cpu_mixed.h"

namespace {

using namespace tessera;
using namespace tessera::kernels::cpu;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string cpu_line() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model = "?";
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  return fmt::format("CPU: {} ({} cores online, {} threads used); best Adam path: {}", model,
                     omp_get_num_procs(), omp_get_max_threads(), adam_path_name(best_adam_path()));
}

// The working set, touched once before timing so page faults are not measured.
struct Arrays {
  explicit Arrays(int64_t n) : p(n), g(n), m(n), v(n), p16(n), g16(n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      p[i] = 0.01f * float(i % 997) - 5.0f;
      g[i] = 1e-3f * float(i % 101) - 0.05f;
      m[i] = 0.0f;
      v[i] = 0.0f;
      p16[i] = 0x3f80;  // 1.0 in bf16
      g16[i] = 0x3a83;  // 1e-3 in bf16
    }
  }
  std::vector<float> p, g, m, v;
  std::vector<uint16_t> p16, g16;
};

struct Variant {
  std::string name;
  double bytes_per_param;
  const char* roof;  // the roof variant with the same traffic ("" for the roofs)
  std::function<void(Arrays&, int64_t n, const AdamWParams&)> run;
  std::vector<double> seconds;
};

// The roofs: the same reads and writes, one add per array (the compiler vectorises these).
void roof_f32(Arrays& a, int64_t n) {
  float *p = a.p.data(), *m = a.m.data(), *v = a.v.data();
  const float* g = a.g.data();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    p[i] += g[i];
    m[i] += g[i];
    v[i] += g[i];
  }
}
void roof_16(Arrays& a, int64_t n) {
  float *p = a.p.data(), *m = a.m.data(), *v = a.v.data();
  uint16_t* p16 = a.p16.data();
  const uint16_t* g16 = a.g16.data();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float g = float(g16[i]);
    p[i] += g;
    m[i] += g;
    v[i] += g;
    p16[i] = uint16_t(p16[i] + g16[i]);
  }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CPU AdamW update against memory bandwidth"};
  int64_t params = 1557611200, chunk = int64_t{1} << 26;
  int rounds = 3, threads = 0;
  app.add_option("--params", params, "parameters in the update (default gpt2-1.5B)")
      ->capture_default_str();
  app.add_option("--chunk", chunk, "elements per array in the working set")->capture_default_str();
  app.add_option("--rounds", rounds, "rounds over the variants")->capture_default_str();
  app.add_option("--threads", threads, "OpenMP threads (0: all cores)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  init_logging();
  if (threads > 0) omp_set_num_threads(threads);
  chunk = std::min(chunk, params);

  Arrays arrays(chunk);
  std::vector<Variant> variants;
  variants.push_back({"memory roof, f32 traffic",
                      28,
                      "",
                      [](Arrays& a, int64_t n, const AdamWParams&) { roof_f32(a, n); },
                      {}});
  for (AdamPath path : {AdamPath::Avx512, AdamPath::Avx2, AdamPath::Scalar}) {
    if (!adam_path_supported(path)) continue;
    variants.push_back({fmt::format("adamw f32, {}", adam_path_name(path)),
                        28,
                        "memory roof, f32 traffic",
                        [path](Arrays& a, int64_t n, const AdamWParams& hp) {
                          adamw_f32(a.p.data(), a.g.data(), a.m.data(), a.v.data(), n, hp, path);
                        },
                        {}});
  }
  variants.push_back({"memory roof, bf16 traffic",
                      26,
                      "",
                      [](Arrays& a, int64_t n, const AdamWParams&) { roof_16(a, n); },
                      {}});
  // adamw_update16's bf16 update is adamw_bf16 on the best path: every path is shown.
  for (AdamPath path : {AdamPath::Avx512, AdamPath::Avx2, AdamPath::Scalar}) {
    if (!adam_path_supported(path)) continue;
    variants.push_back({fmt::format("adamw bf16 master, fused, {}", adam_path_name(path)),
                        26,
                        "memory roof, bf16 traffic",
                        [path](Arrays& a, int64_t n, const AdamWParams& hp) {
                          adamw_bf16(a.p.data(), a.p16.data(), a.g16.data(), a.m.data(),
                                     a.v.data(), n, hp, path);
                        },
                        {}});
  }

  fmt::print("{}\n", cpu_line());
  fmt::print(
      "one update of {} parameters through {} elements per array ({:.2f} GiB working set), "
      "{} rounds\n\n",
      params, chunk, chunk * 20.0 / (1 << 30), rounds);
  AdamWParams hp;
  hp.lr = 1e-4f;
  hp.weight_decay = 0.1f;
  for (Variant& var : variants) var.run(arrays, chunk, hp);  // warm-up
  for (int r = 0; r < rounds; ++r) {
    for (Variant& var : variants) {
      hp.step = r + 2;
      const double t0 = now_s();
      for (int64_t done = 0; done < params; done += chunk) {
        var.run(arrays, std::min(chunk, params - done), hp);
      }
      var.seconds.push_back(now_s() - t0);
    }
  }

  fmt::print(
      "| variant | s per update (median, range) | GB/s | of the roof |\n|---|---|---|---|\n");
  for (const Variant& var : variants) {
    const double s = median(var.seconds);
    const double rate = params * var.bytes_per_param / s / 1e9;
    std::string share = "-";
    for (const Variant& roof : variants) {
      if (roof.name == var.roof) share = fmt::format("{:.0f}%", 100.0 * median(roof.seconds) / s);
    }
    fmt::print("| {} | {:.2f} ({:.2f}-{:.2f}) | {:.1f} | {} |\n", var.name, s,
               *std::min_element(var.seconds.begin(), var.seconds.end()),
               *std::max_element(var.seconds.begin(), var.seconds.end()), rate, share);
  }
  return 0;
}
