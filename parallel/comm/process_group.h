// The communicator interface every backend implements (thread, mpi, nccl): a group of ranks,
// asynchronous collectives that return a Work handle, and split() into subgroups.
//
// Contract shared by every backend:
// - Every member issues the same collectives on a group in the same order (as with MPI and
//   NCCL). Collectives on one group run in issue order; a later one never overtakes an
//   earlier one.
// - Buffers are raw pointers + element counts + DType; they must stay valid and untouched
//   until the returned Work completes.
// - Reductions (Sum, Avg, Max) accept F32, F16 and BF16; 16-bit values are accumulated in
//   f32 and rounded once (round-to-nearest-even). Data-movement ops accept any DType.
// - send/recv are posted in issue order but complete independently: a later collective does
//   not wait for them, so wait on the recv's Work before reading its buffer. Messages between
//   two ranks with one tag match in posting order.
// - batch_send_recv posts a list of sends and receives at once and returns one Work for all
//   of them (pipeline stages exchange activations and gradients this way). Every op of a batch
//   is posted before anything waits, so two neighbours that each post "send to you, receive
//   from you" cannot deadlock, whatever the message sizes or the order of ops within each
//   batch. NCCL runs a batch as one grouped launch; the others post the ops one by one.
//   A batch is checked whole before anything is posted: a peer outside the group, a null
//   buffer with elements, or an op with its own rank that the batch does not pair up is an
//   InvalidArgument. Sending to yourself is allowed (a copy) when the same batch has the
//   matching receive: the k-th send to self pairs with the k-th receive from self, and the
//   two must have the same byte size. The empty batch returns a completed Work.
// - Point-to-point errors and timeouts name the op: its direction, its peer and its `what`,
//   e.g. "recv of activation of micro-batch 3 from pipeline stage 0 (from rank 0)".
// - Nothing waits forever: every op has a timeout (the option, else TESSERA_COMM_TIMEOUT_S).
//   A failure or timeout on one rank aborts the group's communicator so the peers' waits fail
//   with CommError too, instead of hanging.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "runtime/core/dtype.h"

namespace tessera::parallel {

enum class ReduceOp : uint8_t { Sum, Avg, Max };
std::string_view reduce_op_name(ReduceOp op);

using Timeout = std::chrono::milliseconds;
// "Use the process-wide default", i.e. TESSERA_COMM_TIMEOUT_S.
inline constexpr Timeout kDefaultTimeout{-1};
// The effective timeout: t itself, or the TESSERA_COMM_TIMEOUT_S setting for kDefaultTimeout.
Timeout resolve_timeout(Timeout t);
Timeout default_comm_timeout();

struct AllreduceOptions {
  ReduceOp op = ReduceOp::Sum;
  Timeout timeout = kDefaultTimeout;
};
struct ReduceScatterOptions {
  ReduceOp op = ReduceOp::Sum;
  Timeout timeout = kDefaultTimeout;
};
struct ReduceOptions {
  ReduceOp op = ReduceOp::Sum;
  int root = 0;
  Timeout timeout = kDefaultTimeout;
};
struct AllgatherOptions {
  Timeout timeout = kDefaultTimeout;
};
struct BroadcastOptions {
  int root = 0;
  Timeout timeout = kDefaultTimeout;
};
struct SendRecvOptions {
  int tag = 0;
  Timeout timeout = kDefaultTimeout;
  // What the message carries, for its errors and timeouts ("activation of micro-batch 3 from
  // pipeline stage 0"); in batch_send_recv, the default for ops that name none.
  std::string what = {};
};

// One send or receive of a batch_send_recv.
struct P2POp {
  enum class Kind : uint8_t { Send, Recv };
  Kind kind = Kind::Send;
  void* buf = nullptr;  // Send reads it (const), Recv writes it
  size_t count = 0;
  DType dtype = DType::F32;
  int peer = 0;           // destination (Send) or source (Recv), a rank of this group
  std::string what = {};  // for messages, as SendRecvOptions::what
};
struct BarrierOptions {
  Timeout timeout = kDefaultTimeout;
};

// Handle to one asynchronous operation.
class Work {
 public:
  virtual ~Work() = default;
  // True once the operation finished, successfully or not (wait() then tells which).
  virtual bool is_completed() = 0;
  // Blocks until completion. Rethrows a failure captured in the background as CommError;
  // throws CommError if it has not completed within `timeout` (kDefaultTimeout: the op's).
  virtual void wait(Timeout timeout = kDefaultTimeout) = 0;
};
using WorkPtr = std::shared_ptr<Work>;

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string_view backend_name() const = 0;

  // MPI_Comm_split semantics: ranks passing the same color form a new group, ordered by key
  // (ties by rank here). Collective: every member must call it. A negative color opts out
  // and returns nullptr.
  virtual std::shared_ptr<ProcessGroup> split(int color, int key) = 0;

  // Out-of-place all-reduce; send == recv is the in-place form.
  virtual WorkPtr all_reduce(const void* send, void* recv, size_t count, DType dtype,
                             const AllreduceOptions& opts = {}) = 0;
  WorkPtr all_reduce(void* buf, size_t count, DType dtype, const AllreduceOptions& opts = {}) {
    return all_reduce(buf, buf, count, dtype, opts);
  }

  // send holds sum(recv_counts) elements laid out rank by rank; rank r receives the
  // reduction of block r. recv may alias send's own block (send + offset of block r).
  virtual WorkPtr reduce_scatter_v(const void* send, void* recv,
                                   std::span<const size_t> recv_counts, DType dtype,
                                   const ReduceScatterOptions& opts = {}) = 0;
  // Equal blocks: send holds size() * recv_count elements.
  virtual WorkPtr reduce_scatter(const void* send, void* recv, size_t recv_count, DType dtype,
                                 const ReduceScatterOptions& opts = {});

  // recv holds sum(recv_counts) elements; block j comes from rank j, whose send holds
  // recv_counts[j] elements. send may alias recv's own block (in-place).
  virtual WorkPtr all_gather_v(const void* send, void* recv, std::span<const size_t> recv_counts,
                               DType dtype, const AllgatherOptions& opts = {}) = 0;
  virtual WorkPtr all_gather(const void* send, void* recv, size_t send_count, DType dtype,
                             const AllgatherOptions& opts = {});

  // In place: the root's buffer is copied into every other rank's.
  virtual WorkPtr broadcast(void* buf, size_t count, DType dtype,
                            const BroadcastOptions& opts = {}) = 0;

  // Reduction into the root's recv (recv is ignored elsewhere and may be null there).
  virtual WorkPtr reduce(const void* send, void* recv, size_t count, DType dtype,
                         const ReduceOptions& opts = {}) = 0;

  virtual WorkPtr send(const void* buf, size_t count, DType dtype, int dst,
                       const SendRecvOptions& opts = {}) = 0;
  virtual WorkPtr recv(void* buf, size_t count, DType dtype, int src,
                       const SendRecvOptions& opts = {}) = 0;

  // Posts every op at once and completes them together: the Work completes when all have, and
  // wait() rethrows the first failure (in op order). opts.tag and opts.timeout apply to every
  // op. No order between neighbours' batches can deadlock (each side posts all its sends and
  // receives before waiting on any). Empty batch: an already-completed Work. The default
  // posts each op with send()/recv(); a backend whose p2p would serialise (NCCL) overrides it.
  virtual WorkPtr batch_send_recv(std::span<const P2POp> ops, const SendRecvOptions& opts = {});

  virtual WorkPtr barrier(const BarrierOptions& opts = {}) = 0;

  // Fail-stop: makes every pending and future operation of this group's world fail (thread
  // backend), or ends the job (MPI_Abort, ncclCommAbort). Used by the launcher's last-resort
  // handler and after a timeout.
  virtual void abort(std::string_view reason) = 0;
};
using ProcessGroupPtr = std::shared_ptr<ProcessGroup>;

// Shared argument checks, so every backend rejects the same mistakes with the same words.
namespace detail {
bool is_reducible(DType dtype);
void check_reducible(std::string_view op_name, DType dtype);
void check_rank(std::string_view op_name, std::string_view what, int rank, int size);
void check_counts(std::string_view op_name, std::span<const size_t> counts, int size);
size_t total_count(std::span<const size_t> counts);
// How a point-to-point op is named in its messages: "recv of <what> (from rank 0)", or
// "send (to rank 2, tag 7)" without a what. Shared so every backend's errors read alike.
std::string p2p_description(P2POp::Kind kind, int peer, std::string_view what, int tag = 0);
// The checks batch_send_recv makes before posting anything (see the contract above).
void check_p2p_batch(std::span<const P2POp> ops, int rank, int size);
}  // namespace detail

}  // namespace tessera::parallel
