#include "parallel/comm/nccl_group.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include "parallel/comm/work.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"

namespace tessera::parallel {
namespace {

using Clock = std::chrono::steady_clock;

void check_cuda(cudaError_t rc, const char* call) {
  if (rc != cudaSuccess) TS_THROW(CudaError, "cuda: {} failed: {}", call, cudaGetErrorString(rc));
}

void check_nccl(ncclResult_t rc, const char* call) {
  if (rc != ncclSuccess && rc != ncclInProgress)
    TS_THROW(CommError, "nccl: {} failed: {}", call, ncclGetErrorString(rc));
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return ncclFloat32;
    case DType::F16:
      return ncclFloat16;
    case DType::BF16:
      return ncclBfloat16;
    case DType::I32:
      return ncclInt32;
    case DType::U16:
      return ncclUint8;  // moved as bytes; counts are scaled below
    case DType::F64:
      return ncclFloat64;
  }
  return ncclUint8;
}

// U16 has no NCCL type: move it as twice as many bytes.
size_t nccl_count(size_t count, DType dtype) { return dtype == DType::U16 ? count * 2 : count; }

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return ncclSum;
    case ReduceOp::Avg:
      return ncclAvg;
    case ReduceOp::Max:
      return ncclMax;
  }
  return ncclSum;
}

// Completes when the event recorded after the collective on the communication stream fires.
class NcclWork final : public Work {
 public:
  NcclWork(std::string what, cudaEvent_t done, ncclComm_t comm, Timeout timeout)
      : what_(std::move(what)), done_(done), comm_(comm), timeout_(timeout) {}
  ~NcclWork() override { cudaEventDestroy(done_); }

  bool is_completed() override { return cudaEventQuery(done_) != cudaErrorNotReady; }

  void wait(Timeout timeout) override {
    const auto deadline = Clock::now() + (timeout == kDefaultTimeout ? timeout_ : timeout);
    for (;;) {
      const cudaError_t state = cudaEventQuery(done_);
      if (state == cudaSuccess) return;
      if (state != cudaErrorNotReady) check_cuda(state, "cudaEventQuery");
      ncclResult_t async_error = ncclSuccess;
      check_nccl(ncclCommGetAsyncError(comm_, &async_error), "ncclCommGetAsyncError");
      if (async_error != ncclSuccess && async_error != ncclInProgress) {
        ncclCommAbort(comm_);
        TS_THROW(CommError, "nccl: {} failed asynchronously: {}", what_,
                 ncclGetErrorString(async_error));
      }
      if (Clock::now() >= deadline) {
        // The kernel may spin forever on a dead peer; aborting the communicator frees it.
        ncclCommAbort(comm_);
        TS_THROW(CommError, "nccl: {} did not complete within its timeout; communicator aborted",
                 what_);
      }
      std::this_thread::yield();
    }
  }

 private:
  const std::string what_;
  cudaEvent_t done_;
  ncclComm_t comm_;
  const Timeout timeout_;
};

class NcclProcessGroup final : public ProcessGroup {
 public:
  NcclProcessGroup(ncclComm_t comm, int device) : comm_(comm), device_(device) {
    check_nccl(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank");
    check_nccl(ncclCommCount(comm_, &size_), "ncclCommCount");
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
               "cudaStreamCreateWithFlags");
  }

  ~NcclProcessGroup() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    ncclCommDestroy(comm_);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view backend_name() const override { return "nccl"; }

  std::shared_ptr<ProcessGroup> split(int color, int key) override {
    ncclComm_t sub = nullptr;
    check_nccl(ncclCommSplit(comm_, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &sub, nullptr),
               "ncclCommSplit");
    if (sub == nullptr) return nullptr;
    return std::make_shared<NcclProcessGroup>(sub, device_);
  }

  WorkPtr all_reduce(const void* send, void* recv, size_t count, DType dtype,
                     const AllreduceOptions& opts) override {
    detail::check_reducible("all_reduce", dtype);
    return launch("all_reduce", opts.timeout, [&] {
      check_nccl(
          ncclAllReduce(send, recv, count, nccl_type(dtype), nccl_op(opts.op), comm_, stream_),
          "ncclAllReduce");
    });
  }

  WorkPtr reduce_scatter_v(const void* send, void* recv, std::span<const size_t> recv_counts,
                           DType dtype, const ReduceScatterOptions& opts) override {
    detail::check_reducible("reduce_scatter", dtype);
    detail::check_counts("reduce_scatter", recv_counts, size_);
    const bool equal = std::all_of(recv_counts.begin(), recv_counts.end(),
                                   [&](size_t c) { return c == recv_counts[0]; });
    return launch("reduce_scatter", opts.timeout, [&] {
      if (equal) {
        check_nccl(ncclReduceScatter(send, recv, recv_counts[0], nccl_type(dtype), nccl_op(opts.op),
                                     comm_, stream_),
                   "ncclReduceScatter");
        return;
      }
      // Uneven blocks: one reduce per block, rooted at its owner, fused into one launch.
      check_nccl(ncclGroupStart(), "ncclGroupStart");
      size_t offset = 0;
      for (int j = 0; j < size_; ++j) {
        const void* block = static_cast<const char*>(send) + offset * dtype_size(dtype);
        check_nccl(ncclReduce(block, j == rank_ ? recv : nullptr, recv_counts[j], nccl_type(dtype),
                              nccl_op(opts.op), j, comm_, stream_),
                   "ncclReduce");
        offset += recv_counts[j];
      }
      check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    });
  }

  WorkPtr all_gather_v(const void* send, void* recv, std::span<const size_t> recv_counts,
                       DType dtype, const AllgatherOptions& opts) override {
    detail::check_counts("all_gather", recv_counts, size_);
    const bool equal = std::all_of(recv_counts.begin(), recv_counts.end(),
                                   [&](size_t c) { return c == recv_counts[0]; });
    return launch("all_gather", opts.timeout, [&] {
      if (equal) {
        check_nccl(ncclAllGather(send, recv, nccl_count(recv_counts[0], dtype), nccl_type(dtype),
                                 comm_, stream_),
                   "ncclAllGather");
        return;
      }
      check_nccl(ncclGroupStart(), "ncclGroupStart");
      size_t offset = 0;
      for (int j = 0; j < size_; ++j) {
        void* block = static_cast<char*>(recv) + offset * dtype_size(dtype);
        check_nccl(
            ncclBroadcast(j == rank_ ? send : block, block, nccl_count(recv_counts[j], dtype),
                          nccl_type(dtype), j, comm_, stream_),
            "ncclBroadcast");
        offset += recv_counts[j];
      }
      check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    });
  }

  WorkPtr broadcast(void* buf, size_t count, DType dtype, const BroadcastOptions& opts) override {
    detail::check_rank("broadcast", "root", opts.root, size_);
    return launch("broadcast", opts.timeout, [&] {
      check_nccl(ncclBroadcast(buf, buf, nccl_count(count, dtype), nccl_type(dtype), opts.root,
                               comm_, stream_),
                 "ncclBroadcast");
    });
  }

  WorkPtr reduce(const void* send, void* recv, size_t count, DType dtype,
                 const ReduceOptions& opts) override {
    detail::check_reducible("reduce", dtype);
    detail::check_rank("reduce", "root", opts.root, size_);
    return launch("reduce", opts.timeout, [&] {
      check_nccl(ncclReduce(send, recv, count, nccl_type(dtype), nccl_op(opts.op), opts.root, comm_,
                            stream_),
                 "ncclReduce");
    });
  }

  WorkPtr send(const void* buf, size_t count, DType dtype, int dst,
               const SendRecvOptions& opts) override {
    detail::check_rank("send", "destination", dst, size_);
    TS_CHECK(opts.tag == 0, "send: the nccl backend has no tags (got tag {}); order sends instead",
             opts.tag);
    return launch(detail::p2p_description(P2POp::Kind::Send, dst, opts.what), opts.timeout, [&] {
      check_nccl(ncclSend(buf, nccl_count(count, dtype), nccl_type(dtype), dst, comm_, stream_),
                 "ncclSend");
    });
  }

  WorkPtr recv(void* buf, size_t count, DType dtype, int src,
               const SendRecvOptions& opts) override {
    detail::check_rank("recv", "source", src, size_);
    TS_CHECK(opts.tag == 0,
             "recv: the nccl backend has no tags (got tag {}); order receives instead", opts.tag);
    return launch(detail::p2p_description(P2POp::Kind::Recv, src, opts.what), opts.timeout, [&] {
      check_nccl(ncclRecv(buf, nccl_count(count, dtype), nccl_type(dtype), src, comm_, stream_),
                 "ncclRecv");
    });
  }

  // One grouped launch with one event: issued one by one, NCCL would run the sends and
  // receives in turn on the stream, and two neighbours that both send first would deadlock.
  WorkPtr batch_send_recv(std::span<const P2POp> ops, const SendRecvOptions& opts) override {
    detail::check_p2p_batch(ops, rank_, size_);
    TS_CHECK(opts.tag == 0,
             "batch_send_recv: the nccl backend has no tags (got tag {}); order batches instead",
             opts.tag);
    const Timeout timeout = resolve_timeout(opts.timeout);
    if (ops.empty()) return completed_work("batch_send_recv of no ops");
    return launch(batch_description(ops, opts.what), timeout, [&] {
      check_nccl(ncclGroupStart(), "ncclGroupStart");
      try {
        for (const P2POp& op : ops) {
          const size_t n = nccl_count(op.count, op.dtype);
          if (op.kind == P2POp::Kind::Send) {
            check_nccl(ncclSend(op.buf, n, nccl_type(op.dtype), op.peer, comm_, stream_),
                       "ncclSend");
          } else {
            check_nccl(ncclRecv(op.buf, n, nccl_type(op.dtype), op.peer, comm_, stream_),
                       "ncclRecv");
          }
        }
      } catch (...) {
        ncclGroupEnd();  // close the group so later launches are not swallowed into it
        throw;
      }
      check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    });
  }

  WorkPtr barrier(const BarrierOptions& opts) override {
    // NCCL has no barrier: a one-element all-reduce on a scratch device word.
    if (barrier_word_ == nullptr) {
      check_cuda(cudaSetDevice(device_), "cudaSetDevice");
      check_cuda(cudaMalloc(&barrier_word_, sizeof(float)), "cudaMalloc");
    }
    return launch("barrier", opts.timeout, [&] {
      check_nccl(
          ncclAllReduce(barrier_word_, barrier_word_, 1, ncclFloat32, ncclSum, comm_, stream_),
          "ncclAllReduce");
    });
  }

  void abort(std::string_view reason) override {
    spdlog::error("aborting the nccl communicator: {}", reason);
    ncclCommAbort(comm_);
  }

 private:
  // Orders the collective after the work already queued on the legacy default stream, runs it
  // on the communication stream, and returns a Work on the event that follows it.
  template <typename Enqueue>
  WorkPtr launch(std::string_view what, Timeout timeout, Enqueue enqueue) {
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    cudaEvent_t ready;
    check_cuda(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(cudaEventRecord(ready, cudaStreamLegacy), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(stream_, ready, 0), "cudaStreamWaitEvent");
    cudaEventDestroy(ready);
    enqueue();
    cudaEvent_t done;
    check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(cudaEventRecord(done, stream_), "cudaEventRecord");
    return std::make_shared<NcclWork>(fmt::format("nccl rank {}: {}", rank_, what), done, comm_,
                                      resolve_timeout(timeout));
  }

  // "batch of 2 ops: send of X (to rank 1), recv of Y (from rank 1)"; the one Work of a grouped
  // launch stands for all of its ops, so its messages name them (the first few: one line).
  static std::string batch_description(std::span<const P2POp> ops, std::string_view what) {
    constexpr size_t kNamed = 4;
    std::string text = fmt::format("batch of {} ops: ", ops.size());
    for (size_t i = 0; i < std::min(ops.size(), kNamed); ++i) {
      const P2POp& op = ops[i];
      if (i > 0) text += ", ";
      text += detail::p2p_description(op.kind, op.peer, op.what.empty() ? what : op.what);
    }
    if (ops.size() > kNamed) text += fmt::format(" and {} more", ops.size() - kNamed);
    return text;
  }

  ncclComm_t comm_;
  int device_;
  int rank_ = 0;
  int size_ = 1;
  cudaStream_t stream_ = nullptr;
  void* barrier_word_ = nullptr;
};

}  // namespace

bool nccl_compiled() { return true; }

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error for later callers
    return 0;
  }
  return count;
}

ProcessGroupPtr make_nccl_group(ProcessGroup& bootstrap, int device) {
  const int devices = cuda_device_count();
  if (devices == 0)
    TS_THROW(CommError, "make_nccl_group: no CUDA device is visible on rank {}", bootstrap.rank());
  if (device < 0) device = bootstrap.rank() % devices;
  TS_CHECK(device < devices, "make_nccl_group: device {} requested but only {} are visible", device,
           devices);
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (bootstrap.rank() == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  static_assert(sizeof(ncclUniqueId) % 2 == 0);
  bootstrap.broadcast(&id, sizeof(id) / 2, DType::U16, {.root = 0})->wait();
  ncclComm_t comm;
  check_nccl(ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank()), "ncclCommInitRank");
  return std::make_shared<NcclProcessGroup>(comm, device);
}

}  // namespace tessera::parallel
