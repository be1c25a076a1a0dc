// A ProcessGroup that forwards everything to another one and counts, per rank, the bytes its
// collectives move: the measurement behind "bytes communicated per step" (bench_zero).
//
// Volume is counted in the ring model the ZeRO paper uses: an all-reduce of B bytes moves
// 2 B (n-1)/n per rank, a reduce-scatter or an all-gather of a B-byte buffer B (n-1)/n, a
// broadcast B; so stage 0's all-reduce of the gradients is "2 Psi" up to the (n-1)/n factor.
//
// split() returns a CountingGroup too, around the inner group's split, with its own count:
// the tensor- and data-parallel groups a Trainer splits from a counted world are counted
// (bench_tp), each apart. The parent's volume_bytes() stays its own collectives'.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "parallel/comm/process_group.h"

namespace tessera::parallel {

class CountingGroup final : public ProcessGroup {
 public:
  explicit CountingGroup(ProcessGroup& inner) : inner_(inner) {}
  // Owns `inner` (a subgroup this one split off).
  explicit CountingGroup(std::shared_ptr<ProcessGroup> inner)
      : owned_(std::move(inner)), inner_(*owned_) {}

  // This group's own collectives (not its subgroups').
  int64_t volume_bytes() const { return volume_.load(); }
  // This group's and every subgroup's, recursively.
  int64_t total_volume_bytes() const;
  // The subgroups split from this one, in the order of the split() calls.
  std::vector<std::shared_ptr<CountingGroup>> subgroups() const;
  // Zeroes this group's count and its subgroups'.
  void reset();

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string_view backend_name() const override { return inner_.backend_name(); }
  std::shared_ptr<ProcessGroup> split(int color, int key) override;
  WorkPtr all_reduce(const void* send, void* recv, size_t count, DType dtype,
                     const AllreduceOptions& opts) override;
  WorkPtr reduce_scatter_v(const void* send, void* recv, std::span<const size_t> recv_counts,
                           DType dtype, const ReduceScatterOptions& opts) override;
  WorkPtr all_gather_v(const void* send, void* recv, std::span<const size_t> recv_counts,
                       DType dtype, const AllgatherOptions& opts) override;
  WorkPtr broadcast(void* buf, size_t count, DType dtype, const BroadcastOptions& opts) override;
  WorkPtr reduce(const void* send, void* recv, size_t count, DType dtype,
                 const ReduceOptions& opts) override;
  WorkPtr send(const void* buf, size_t count, DType dtype, int dst,
               const SendRecvOptions& opts) override;
  WorkPtr recv(void* buf, size_t count, DType dtype, int src, const SendRecvOptions& opts) override;
  // Forwarded whole, so the inner backend still runs it as one batch (NCCL: one launch).
  WorkPtr batch_send_recv(std::span<const P2POp> ops, const SendRecvOptions& opts) override;
  WorkPtr barrier(const BarrierOptions& opts) override { return inner_.barrier(opts); }
  void abort(std::string_view reason) override { inner_.abort(reason); }

 private:
  // bytes x (n-1)/n: one rank's share of a ring over the whole buffer.
  void add_ring(size_t bytes, double passes);

  std::shared_ptr<ProcessGroup> owned_;  // null when wrapping a group owned elsewhere
  ProcessGroup& inner_;
  std::atomic<int64_t> volume_{0};
  mutable std::mutex subgroups_mutex_;
  std::vector<std::shared_ptr<CountingGroup>> subgroups_;
};

}  // namespace tessera::parallel
