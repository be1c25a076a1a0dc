// A pipeline-parallel training job that fails on purpose in the middle of a step, for
// tests.cmake's failure entries. The whole world is one 1F1B pipeline (p = -np, 4
// micro-batches); in step 2, world rank 1 reaches its send of the gradient of micro-batch 1
// (to stage 0) and then, by MODE:
//   throw   throws; the top-level handler aborts the job, as the launcher's does;
//   kill    SIGKILLs itself; mpirun must end the others;
//   absent  stalls there (it never sends); stage 0's receive times out (TESSERA_COMM_TIMEOUT_S)
//           and its message names the transfer.
// Every mode must end the whole job non-zero, quickly. Exit 0 means nothing failed: a bug.
//   pipeline_failure_main MODE
#include <signal.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "../pipeline_parallel_checks.h"
#include "parallel/comm/mpi_group.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/engine/trainer.h"

namespace tessera::engine {
namespace {

using parallel::P2POp;

// Runs `before_send` ahead of every send the wrapped group (and the subgroups it splits)
// posts, with the send's `what`; everything else is forwarded untouched.
class SendHookGroup final : public parallel::ProcessGroup {
 public:
  using Hook = std::function<void(const std::string& what)>;
  SendHookGroup(parallel::ProcessGroup& inner, std::shared_ptr<Hook> hook)
      : inner_(inner), hook_(std::move(hook)) {}
  SendHookGroup(parallel::ProcessGroupPtr owned, std::shared_ptr<Hook> hook)
      : owned_(std::move(owned)), inner_(*owned_), hook_(std::move(hook)) {}

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string_view backend_name() const override { return inner_.backend_name(); }
  parallel::ProcessGroupPtr split(int color, int key) override {
    parallel::ProcessGroupPtr sub = inner_.split(color, key);
    return sub == nullptr ? nullptr : std::make_shared<SendHookGroup>(std::move(sub), hook_);
  }
  parallel::WorkPtr all_reduce(const void* send, void* recv, size_t count, DType dtype,
                               const parallel::AllreduceOptions& opts) override {
    return inner_.all_reduce(send, recv, count, dtype, opts);
  }
  parallel::WorkPtr reduce_scatter_v(const void* send, void* recv,
                                     std::span<const size_t> recv_counts, DType dtype,
                                     const parallel::ReduceScatterOptions& opts) override {
    return inner_.reduce_scatter_v(send, recv, recv_counts, dtype, opts);
  }
  parallel::WorkPtr reduce_scatter(const void* send, void* recv, size_t recv_count, DType dtype,
                                   const parallel::ReduceScatterOptions& opts) override {
    return inner_.reduce_scatter(send, recv, recv_count, dtype, opts);
  }
  parallel::WorkPtr all_gather_v(const void* send, void* recv, std::span<const size_t> recv_counts,
                                 DType dtype, const parallel::AllgatherOptions& opts) override {
    return inner_.all_gather_v(send, recv, recv_counts, dtype, opts);
  }
  parallel::WorkPtr all_gather(const void* send, void* recv, size_t send_count, DType dtype,
                               const parallel::AllgatherOptions& opts) override {
    return inner_.all_gather(send, recv, send_count, dtype, opts);
  }
  parallel::WorkPtr broadcast(void* buf, size_t count, DType dtype,
                              const parallel::BroadcastOptions& opts) override {
    return inner_.broadcast(buf, count, dtype, opts);
  }
  parallel::WorkPtr reduce(const void* send, void* recv, size_t count, DType dtype,
                           const parallel::ReduceOptions& opts) override {
    return inner_.reduce(send, recv, count, dtype, opts);
  }
  parallel::WorkPtr send(const void* buf, size_t count, DType dtype, int dst,
                         const parallel::SendRecvOptions& opts) override {
    (*hook_)(opts.what);
    return inner_.send(buf, count, dtype, dst, opts);
  }
  parallel::WorkPtr recv(void* buf, size_t count, DType dtype, int src,
                         const parallel::SendRecvOptions& opts) override {
    return inner_.recv(buf, count, dtype, src, opts);
  }
  parallel::WorkPtr batch_send_recv(std::span<const P2POp> ops,
                                    const parallel::SendRecvOptions& opts) override {
    for (const P2POp& op : ops) {
      if (op.kind == P2POp::Kind::Send) (*hook_)(op.what.empty() ? opts.what : op.what);
    }
    return inner_.batch_send_recv(ops, opts);
  }
  parallel::WorkPtr barrier(const parallel::BarrierOptions& opts) override {
    return inner_.barrier(opts);
  }
  void abort(std::string_view reason) override { inner_.abort(reason); }

 private:
  parallel::ProcessGroupPtr owned_;
  parallel::ProcessGroup& inner_;
  std::shared_ptr<Hook> hook_;
};

constexpr const char* kTransfer = "gradient of micro-batch 1 from virtual stage 1 to 0";

int run(const std::string& mode) {
  TS_CHECK(mode == "throw" || mode == "kill" || mode == "absent",
           "pipeline_failure_main: mode '{}' is not one of throw, kill, absent", mode);
  parallel::ProcessGroupPtr mpi_world = parallel::make_mpi_world();
  init_logging(mpi_world->rank(), mpi_world->size());
  TS_CHECK(mpi_world->size() >= 2, "pipeline_failure_main needs at least 2 ranks, got {}",
           mpi_world->size());
  int step = 0;
  const int me = mpi_world->rank();
  auto hook = std::make_shared<SendHookGroup::Hook>([&](const std::string& what) {
    if (me != 1 || step != 2 || what != kTransfer) return;
    spdlog::warn("rank 1: failing on purpose ({}) before its send of {}", mode, what);
    spdlog::default_logger()->flush();
    if (mode == "throw")
      TS_THROW(Error, "pipeline stage 1 failed on purpose before its send of {}", what);
    if (mode == "kill") raise(SIGKILL);
    std::this_thread::sleep_for(std::chrono::hours(1));  // absent
  });
  SendHookGroup world(*mpi_world, hook);
  TrainConfig c = test_util::pp_config(mpi_world->size(), "1f1b", 4);
  c.output_dir += "_failure" + std::to_string(me);
  Trainer t(c, &world);
  for (step = 1; step <= 4; ++step) t.step();
  spdlog::error("rank {}: every step finished, but rank 1 was to fail in step 2", me);
  return 0;
}

}  // namespace
}  // namespace tessera::engine

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "throw";
  tessera::parallel::mpi_init(&argc, &argv);
  int rc = 0;
  try {
    rc = tessera::engine::run(mode);
  } catch (const std::exception& e) {
    // As the launcher: one rank failing must not leave the others blocked, so end the job.
    tessera::parallel::mpi_abort(e.what(), 1);
  }
  tessera::parallel::mpi_finalize();
  return rc;
}
