// ZeRO-Offload's copy engine on a GPU: cudaMemcpyAsync on two non-blocking streams (device to
// host, host to device) over cudaHostAlloc'd memory, one event recorded behind each copy, so
// a ticket is waited for with cudaEventSynchronize and events are recycled once passed.
#include "runtime/core/copy_engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <mutex>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/core/memory_stats.h"
#include "runtime/kernels/cuda/context.h"
#include "runtime/kernels/cuda/cuda_check.cuh"
#include "runtime/kernels/cuda_kernels.h"

namespace tessera::kernels::cuda {
namespace {

class CudaCopyEngine final : public CopyEngine {
 public:
  CudaCopyEngine(int device, Stream producer)
      : device_(device), producer_(detail::to_cuda(producer)) {
    set_device(device_);
    TS_CUDA_CHECK(cudaStreamCreateWithFlags(&lanes_[0].stream, cudaStreamNonBlocking));
    TS_CUDA_CHECK(cudaStreamCreateWithFlags(&lanes_[1].stream, cudaStreamNonBlocking));
    TS_CUDA_CHECK(cudaEventCreateWithFlags(&produced_, cudaEventDisableTiming));
  }

  // Finishes the queued copies; failures here are reported, not thrown.
  ~CudaCopyEngine() override {
    for (Lane& lane : lanes_) {
      if (cudaStreamSynchronize(lane.stream) != cudaSuccess) {
        spdlog::error("copy engine on cuda:{}: a queued copy failed at shutdown", device_);
      }
      for (const Pending& p : lane.pending) cudaEventDestroy(p.event);
      cudaStreamDestroy(lane.stream);
    }
    for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
    cudaEventDestroy(produced_);
  }

  Device device() const override { return Device::cuda(device_); }
  std::string name() const override { return "cuda"; }

  void* allocate_host(size_t bytes) override {
    void* ptr = nullptr;
    const cudaError_t status =
        cudaHostAlloc(&ptr, std::max<size_t>(bytes, 1), cudaHostAllocDefault);
    if (status != cudaSuccess) {
      cudaGetLastError();
      TS_THROW(CudaError,
               "cudaHostAlloc of {} of page-locked host memory failed ({}): lower "
               "sub_group_size or the ranks per node, or set offload_optimizer.pin_memory false",
               format_bytes(static_cast<int64_t>(bytes)), cudaGetErrorString(status));
    }
    std::memset(ptr, 0, bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.host_bytes += static_cast<int64_t>(bytes);
    stats_.host_peak_bytes = std::max(stats_.host_peak_bytes, stats_.host_bytes);
    return ptr;
  }

  void free_host(void* ptr, size_t bytes) override {
    if (ptr == nullptr) return;
    const cudaError_t status = cudaFreeHost(ptr);
    if (status != cudaSuccess && status != cudaErrorCudartUnloading) {
      spdlog::error("cudaFreeHost failed: {}", cudaGetErrorString(status));
    }
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.host_bytes -= static_cast<int64_t>(bytes);
  }

  CopyTicket copy_to_host(void* host_dst, const void* device_src, size_t bytes) override {
    std::lock_guard<std::mutex> lock(mutex_);
    Lane& lane = lanes_[0];
    // After what the producer stream has queued so far: the gradients being copied.
    TS_CUDA_CHECK(cudaEventRecord(produced_, producer_));
    TS_CUDA_CHECK(cudaStreamWaitEvent(lane.stream, produced_, 0));
    TS_CUDA_CHECK(
        cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, lane.stream));
    ++stats_.to_host_copies;
    stats_.to_host_bytes += static_cast<int64_t>(bytes);
    return record(lane, CopyDirection::ToHost);
  }

  CopyTicket copy_to_device(void* device_dst, const void* host_src, size_t bytes) override {
    std::lock_guard<std::mutex> lock(mutex_);
    Lane& lane = lanes_[1];
    TS_CUDA_CHECK(
        cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice, lane.stream));
    ++stats_.to_device_copies;
    stats_.to_device_bytes += static_cast<int64_t>(bytes);
    return record(lane, CopyDirection::ToDevice);
  }

  void wait(CopyTicket ticket) override {
    if (ticket.sequence == 0) return;
    std::unique_lock<std::mutex> lock(mutex_);
    Lane& lane = lanes_[ticket.direction == CopyDirection::ToHost ? 0 : 1];
    TS_CHECK(ticket.sequence <= lane.queued, "waiting for copy {} of {} queued", ticket.sequence,
             lane.queued);
    while (!lane.pending.empty() && lane.pending.front().sequence <= ticket.sequence) {
      const Pending p = lane.pending.front();
      lane.pending.pop_front();
      lock.unlock();
      const cudaError_t status = cudaEventSynchronize(p.event);
      lock.lock();
      free_events_.push_back(p.event);
      if (status != cudaSuccess)
        detail::throw_cuda_error("cudaEventSynchronize", status, __FILE__, __LINE__);
    }
  }

  void synchronize() override {
    int64_t to_host = 0, to_device = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      to_host = lanes_[0].queued;
      to_device = lanes_[1].queued;
    }
    wait({CopyDirection::ToHost, to_host});
    wait({CopyDirection::ToDevice, to_device});
  }

  CopyStats stats() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

 private:
  struct Pending {
    int64_t sequence;
    cudaEvent_t event;
  };
  struct Lane {
    cudaStream_t stream = nullptr;
    int64_t queued = 0;
    std::deque<Pending> pending;  // events behind copies not waited for yet, in order
  };

  CopyTicket record(Lane& lane, CopyDirection direction) {
    cudaEvent_t event = nullptr;
    if (free_events_.empty()) {
      TS_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    } else {
      event = free_events_.back();
      free_events_.pop_back();
    }
    TS_CUDA_CHECK(cudaEventRecord(event, lane.stream));
    lane.pending.push_back({++lane.queued, event});
    return {direction, lane.queued};
  }

  int device_;
  cudaStream_t producer_;
  cudaEvent_t produced_ = nullptr;
  mutable std::mutex mutex_;
  Lane lanes_[2];
  std::vector<cudaEvent_t> free_events_;
  CopyStats stats_;
};

}  // namespace

std::unique_ptr<CopyEngine> make_copy_engine(int device, Stream producer) {
  return std::make_unique<CudaCopyEngine>(device, producer);
}

}  // namespace tessera::kernels::cuda
