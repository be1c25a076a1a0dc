#include "parallel/comm/counting_group.h"

namespace tessera::parallel {

std::shared_ptr<ProcessGroup> CountingGroup::split(int color, int key) {
  std::shared_ptr<ProcessGroup> inner = inner_.split(color, key);
  if (inner == nullptr) return nullptr;
  auto counted = std::make_shared<CountingGroup>(std::move(inner));
  const std::lock_guard lock(subgroups_mutex_);
  subgroups_.push_back(counted);
  return counted;
}

std::vector<std::shared_ptr<CountingGroup>> CountingGroup::subgroups() const {
  const std::lock_guard lock(subgroups_mutex_);
  return subgroups_;
}

int64_t CountingGroup::total_volume_bytes() const {
  int64_t total = volume_bytes();
  for (const auto& g : subgroups()) total += g->total_volume_bytes();
  return total;
}

void CountingGroup::reset() {
  volume_ = 0;
  for (const auto& g : subgroups()) g->reset();
}

void CountingGroup::add_ring(size_t bytes, double passes) {
  const double n = size();
  volume_ += static_cast<int64_t>(passes * static_cast<double>(bytes) * (n - 1) / n);
}

WorkPtr CountingGroup::all_reduce(const void* send, void* recv, size_t count, DType dtype,
                                  const AllreduceOptions& opts) {
  add_ring(count * dtype_size(dtype), 2.0);
  return inner_.all_reduce(send, recv, count, dtype, opts);
}

WorkPtr CountingGroup::reduce_scatter_v(const void* send, void* recv,
                                        std::span<const size_t> recv_counts, DType dtype,
                                        const ReduceScatterOptions& opts) {
  add_ring(detail::total_count(recv_counts) * dtype_size(dtype), 1.0);
  return inner_.reduce_scatter_v(send, recv, recv_counts, dtype, opts);
}

WorkPtr CountingGroup::all_gather_v(const void* send, void* recv,
                                    std::span<const size_t> recv_counts, DType dtype,
                                    const AllgatherOptions& opts) {
  add_ring(detail::total_count(recv_counts) * dtype_size(dtype), 1.0);
  return inner_.all_gather_v(send, recv, recv_counts, dtype, opts);
}

WorkPtr CountingGroup::broadcast(void* buf, size_t count, DType dtype,
                                 const BroadcastOptions& opts) {
  volume_ += static_cast<int64_t>(count * dtype_size(dtype));
  return inner_.broadcast(buf, count, dtype, opts);
}

WorkPtr CountingGroup::reduce(const void* send, void* recv, size_t count, DType dtype,
                              const ReduceOptions& opts) {
  add_ring(count * dtype_size(dtype), 1.0);
  return inner_.reduce(send, recv, count, dtype, opts);
}

WorkPtr CountingGroup::send(const void* buf, size_t count, DType dtype, int dst,
                            const SendRecvOptions& opts) {
  volume_ += static_cast<int64_t>(count * dtype_size(dtype));
  return inner_.send(buf, count, dtype, dst, opts);
}

WorkPtr CountingGroup::recv(void* buf, size_t count, DType dtype, int src,
                            const SendRecvOptions& opts) {
  return inner_.recv(buf, count, dtype, src, opts);
}

// As with send/recv, a message counts once: on the rank that sends it.
WorkPtr CountingGroup::batch_send_recv(std::span<const P2POp> ops, const SendRecvOptions& opts) {
  for (const P2POp& op : ops) {
    if (op.kind == P2POp::Kind::Send)
      volume_ += static_cast<int64_t>(op.count * dtype_size(op.dtype));
  }
  return inner_.batch_send_recv(ops, opts);
}

}  // namespace tessera::parallel
