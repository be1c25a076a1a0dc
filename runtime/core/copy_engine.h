// Copies between a device's memory and page-locked host memory, queued on the engine's own
// streams (one per direction) so they overlap the compute on the device: the device tier of
// ZeRO-Offload (memory/offload/host_tier.h). The CUDA backend's engine runs cudaMemcpyAsync
// on two streams over cudaHostAlloc'd memory (kernels::cuda::make_copy_engine); on the CPU,
// MemcpyCopyEngine is a twin whose copies are memcpys on two worker threads, so the same
// pipeline (ordering, double buffering, accounting) runs and is tested without a GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "runtime/core/device.h"

namespace tessera {

enum class CopyDirection { ToHost, ToDevice };

// A queued copy: the n-th of its direction. Copies of one direction finish in queue order, so
// waiting for one waits for every earlier one too. sequence 0 stands for no copy.
struct CopyTicket {
  CopyDirection direction = CopyDirection::ToHost;
  int64_t sequence = 0;
};

struct CopyStats {
  int64_t to_host_copies = 0, to_host_bytes = 0;
  int64_t to_device_copies = 0, to_device_bytes = 0;
  int64_t host_bytes = 0, host_peak_bytes = 0;  // page-locked memory held / at most
};

class CopyEngine {
 public:
  virtual ~CopyEngine() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;

  // Page-locked host memory, zero-filled (copies from and into it run at full speed and
  // asynchronously). Throws naming the bytes and the limit when the system refuses.
  virtual void* allocate_host(size_t bytes) = 0;
  virtual void free_host(void* ptr, size_t bytes) = 0;

  // Queued behind the earlier copies of the same direction. Neither buffer may be touched
  // (the source written, the destination read) until wait() on the ticket returns.
  virtual CopyTicket copy_to_host(void* host_dst, const void* device_src, size_t bytes) = 0;
  virtual CopyTicket copy_to_device(void* device_dst, const void* host_src, size_t bytes) = 0;
  // Until the ticket's copy (so every earlier one of its direction) has finished; rethrows a
  // copy's failure. A ticket of sequence 0 returns at once.
  virtual void wait(CopyTicket ticket) = 0;
  // Until every queued copy of both directions has finished.
  virtual void synchronize() = 0;

  virtual CopyStats stats() const = 0;
};

}  // namespace tessera
