// Benchmark (not a test): bus bandwidth of all_reduce, reduce_scatter and all_gather from
// 4 KiB to 256 MiB (f32), on the thread backend or (under mpirun) the MPI backend beside the
// same MPI collectives called directly, and beside memcpy of the same size.
//
// Bus bandwidth (NCCL's convention): all_reduce moves 2 (n-1)/n of the buffer per rank,
// reduce_scatter and all_gather (n-1)/n, so numbers compare across world sizes.
//   build/bench/bench_collectives --backend thread --ranks 2
//   mpirun -np 2 build/bench/bench_collectives --backend mpi
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <vector>

#include "parallel/comm/mpi_group.h"
#include "parallel/comm/thread_group.h"
#include "runtime/core/logging.h"
#include "tessera/config.h"
#if TESSERA_WITH_MPI
#include <mpi.h>
#endif

namespace {

using namespace tessera;
using namespace tessera::parallel;
using Clock = std::chrono::steady_clock;

// Mean seconds per call over enough calls to fill ~0.2 s, after one warm-up; every rank
// runs the same number of calls (rank 0 decides and broadcasts nothing: counts are derived
// from the size alone).
double time_calls(size_t bytes, ProcessGroup& g, const std::function<void()>& call) {
  const int iters = bytes <= (1 << 20) ? 200 : bytes <= (16 << 20) ? 20 : 4;
  call();
  g.barrier()->wait();
  const auto t = Clock::now();
  for (int i = 0; i < iters; ++i) call();
  g.barrier()->wait();
  return std::chrono::duration<double>(Clock::now() - t).count() / iters;
}

double memcpy_seconds(size_t bytes) {
  std::vector<char> a(bytes, 1), b(bytes, 0);
  const int iters = bytes <= (1 << 20) ? 200 : bytes <= (16 << 20) ? 20 : 4;
  std::memcpy(b.data(), a.data(), bytes);
  const auto t = Clock::now();
  for (int i = 0; i < iters; ++i) std::memcpy(b.data(), a.data(), bytes);
  return std::chrono::duration<double>(Clock::now() - t).count() / iters;
}

void run(ProcessGroup& g, bool raw_mpi) {
  const int n = g.size();
  if (g.rank() == 0) {
    std::printf("%s backend, %d ranks; GB/s (bus bandwidth; memcpy: bytes/s of one copy)\n",
                std::string(g.backend_name()).c_str(), n);
    std::printf("| size | all_reduce | reduce_scatter | all_gather |%s memcpy |\n",
                raw_mpi ? " MPI_Allreduce | MPI_Reduce_scatter_block | MPI_Allgather |" : "");
    std::printf("|---|---|---|---|%s---|\n", raw_mpi ? "---|---|---|" : "");
  }
  for (size_t bytes = 4096; bytes <= (size_t{256} << 20); bytes *= 4) {
    const size_t count = bytes / sizeof(float) / n * n;  // divisible by n for the scatter ops
    const size_t real = count * sizeof(float);
    std::vector<float> send(count, 1.0f), recv(count, 0.0f);
    const double factor_ar = 2.0 * (n - 1) / n, factor = 1.0 * (n - 1) / n;
    AllreduceOptions sum;
    const double ar = time_calls(real, g, [&] {
      g.all_reduce(send.data(), recv.data(), count, DType::F32, sum)->wait();
    });
    const double rs = time_calls(real, g, [&] {
      g.reduce_scatter(send.data(), recv.data(), count / n, DType::F32)->wait();
    });
    const double ag = time_calls(real, g, [&] {
      g.all_gather(send.data(), recv.data(), count / n, DType::F32)->wait();
    });
    double mar = 0, mrs = 0, mag = 0;
#if TESSERA_WITH_MPI
    if (raw_mpi) {
      mar = time_calls(real, g, [&] {
        MPI_Allreduce(send.data(), recv.data(), static_cast<int>(count), MPI_FLOAT, MPI_SUM,
                      MPI_COMM_WORLD);
      });
      mrs = time_calls(real, g, [&] {
        MPI_Reduce_scatter_block(send.data(), recv.data(), static_cast<int>(count / n), MPI_FLOAT,
                                 MPI_SUM, MPI_COMM_WORLD);
      });
      mag = time_calls(real, g, [&] {
        MPI_Allgather(send.data(), static_cast<int>(count / n), MPI_FLOAT, recv.data(),
                      static_cast<int>(count / n), MPI_FLOAT, MPI_COMM_WORLD);
      });
    }
#endif
    const double mc = g.rank() == 0 ? memcpy_seconds(real) : 1.0;
    if (g.rank() == 0) {
      const double gb = real / 1e9;
      std::string size = real >= (1 << 20) ? std::to_string(real >> 20) + " MiB"
                                           : std::to_string(real >> 10) + " KiB";
      std::printf("| %s | %.2f | %.2f | %.2f |", size.c_str(), gb * factor_ar / ar, gb * factor / rs,
                  gb * factor / ag);
      if (raw_mpi) {
        std::printf(" %.2f | %.2f | %.2f |", gb * factor_ar / mar, gb * factor / mrs,
                    gb * factor / mag);
      }
      std::printf(" %.2f |\n", gb / mc);
      std::fflush(stdout);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"collective bandwidth benchmark"};
  std::string backend = "thread";
  int ranks = 2;
  app.add_option("--backend", backend, "thread or mpi")->capture_default_str();
  app.add_option("--ranks", ranks, "thread ranks")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  setenv("TESSERA_LOG_LEVEL", "warn", 0);
  init_logging();
  if (backend == "thread") {
    spawn_ranks(ranks, [](ProcessGroup& g) { run(g, false); });
    return 0;
  }
  mpi_init(&argc, &argv);
  {
    ProcessGroupPtr world = make_mpi_world();
    run(*world, true);
  }
  mpi_finalize();
  return 0;
}
