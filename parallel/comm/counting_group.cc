#include "parallel/comm/counting_group.h"

namespace tessera::parallel {

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

}  // namespace tessera::parallel
