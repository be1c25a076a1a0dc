// A ProcessGroup that forwards everything to another one and counts, per rank, the bytes its
// collectives move: the measurement behind "bytes communicated per step" (bench_zero).
//
// Volume is counted in the ring model the ZeRO paper uses: an all-reduce of B bytes moves
// 2 B (n-1)/n per rank, a reduce-scatter or an all-gather of a B-byte buffer B (n-1)/n, a
// broadcast B; so stage 0's all-reduce of the gradients is "2 Psi" up to the (n-1)/n factor.
#pragma once

#include <atomic>
#include <cstdint>

#include "parallel/comm/process_group.h"

namespace tessera::parallel {

class CountingGroup final : public ProcessGroup {
 public:
  explicit CountingGroup(ProcessGroup& inner) : inner_(inner) {}

  int64_t volume_bytes() const { return volume_.load(); }
  void reset() { volume_ = 0; }

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string_view backend_name() const override { return inner_.backend_name(); }
  std::shared_ptr<ProcessGroup> split(int color, int key) override {
    return inner_.split(color, key);
  }
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
  WorkPtr barrier(const BarrierOptions& opts) override { return inner_.barrier(opts); }
  void abort(std::string_view reason) override { inner_.abort(reason); }

 private:
  // bytes x (n-1)/n: one rank's share of a ring over the whole buffer.
  void add_ring(size_t bytes, double passes);

  ProcessGroup& inner_;
  std::atomic<int64_t> volume_{0};
};

}  // namespace tessera::parallel
