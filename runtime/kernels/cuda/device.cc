// Devices, streams, copies, the CUDA DeviceAllocator behind Storage, and the per-thread
// cuBLAS handles and reduction buffers (context.h).
//
// Allocator registration: a static initialiser in this file registers it, but a static
// library's object file is only linked when something references it. So the registration
// also runs (once) from device_count(), set_device() and create_stream(), which live here:
// every program that uses the GPU calls one of them before allocating device memory.
#include <spdlog/spdlog.h>

#include <mutex>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/core/memory_stats.h"
#include "runtime/core/storage.h"
#include "runtime/kernels/cuda/context.h"
#include "runtime/kernels/cuda/cuda_check.cuh"
#include "runtime/kernels/cuda_kernels.h"

namespace tessera::kernels::cuda {
namespace {

// Makes `device` current for a scope; the caller's device comes back afterwards, so an
// allocation for another device does not move the calling thread.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    TS_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) TS_CUDA_CHECK(cudaSetDevice(device));
    changed_ = previous_ != device;
  }
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(previous_);  // no throw from a destructor; nothing to undo
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

class CudaAllocator final : public DeviceAllocator {
 public:
  void* allocate(size_t bytes, int device_index) override {
    DeviceGuard guard(device_index);
    void* ptr = nullptr;
    const cudaError_t status = cudaMalloc(&ptr, bytes);
    if (status != cudaSuccess) {
      cudaGetLastError();  // an out-of-memory failure must not linger for the next check
      TS_THROW(CudaError, "cudaMalloc of {} on cuda:{} failed: {}",
               format_bytes(static_cast<int64_t>(bytes)), device_index, cudaGetErrorString(status));
    }
    return ptr;
  }

  // Called from Storage's destructor, so it reports instead of throwing. At process exit the
  // runtime may already be unloading; that is not worth a message.
  void deallocate(void* ptr, int device_index) override {
    const cudaError_t status = cudaFree(ptr);
    if (status != cudaSuccess && status != cudaErrorCudartUnloading) {
      spdlog::error("cudaFree on cuda:{} failed: {}", device_index, cudaGetErrorString(status));
    }
  }

  // On the legacy default stream: the blocking streams from create_stream() order after it,
  // so a kernel queued on any of them sees the zeros without a host wait.
  void memset_zero(void* ptr, size_t bytes, int device_index) override {
    DeviceGuard guard(device_index);
    TS_CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, nullptr));
  }
};

CudaAllocator g_cuda_allocator;

void register_cuda_allocator() {
  static std::once_flag once;
  std::call_once(once, [] { register_device_allocator(DeviceType::CUDA, &g_cuda_allocator); });
}

[[maybe_unused]] const bool g_registered_at_start = (register_cuda_allocator(), true);

struct PerDeviceState {
  cublasHandle_t cublas = nullptr;
  double* reduction = nullptr;
};

// Resources are released when the thread exits; failures then are ignored because the
// runtime may be shutting down and there is nobody left to tell.
struct ThreadState {
  std::vector<PerDeviceState> devices;
  ~ThreadState() {
    for (PerDeviceState& d : devices) {
      if (d.cublas != nullptr) cublasDestroy(d.cublas);
      if (d.reduction != nullptr) cudaFree(d.reduction);
    }
  }
  PerDeviceState& current() {
    const int device = current_device();
    if (static_cast<size_t>(device) >= devices.size()) devices.resize(device + 1);
    return devices[device];
  }
};

thread_local ThreadState t_state;

}  // namespace

int device_count() {
  register_cuda_allocator();
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: not an error for the caller
    return 0;
  }
  return count;
}

void set_device(int device) {
  register_cuda_allocator();
  TS_CUDA_CHECK(cudaSetDevice(device));
}

int current_device() {
  int device = 0;
  TS_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

Stream create_stream() {
  register_cuda_allocator();
  cudaStream_t stream = nullptr;
  TS_CUDA_CHECK(cudaStreamCreate(&stream));
  return stream;
}

void destroy_stream(Stream stream) {
  if (stream != nullptr) TS_CUDA_CHECK(cudaStreamDestroy(detail::to_cuda(stream)));
}

void synchronize(Stream stream) { TS_CUDA_CHECK(cudaStreamSynchronize(detail::to_cuda(stream))); }

void copy_to_device(void* device_dst, const void* host_src, size_t bytes, Stream stream) {
  if (bytes == 0) return;
  TS_CUDA_CHECK(cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice,
                                detail::to_cuda(stream)));
  TS_CUDA_CHECK(cudaStreamSynchronize(detail::to_cuda(stream)));
}

void copy_to_host(void* host_dst, const void* device_src, size_t bytes, Stream stream) {
  if (bytes == 0) return;
  TS_CUDA_CHECK(cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost,
                                detail::to_cuda(stream)));
  TS_CUDA_CHECK(cudaStreamSynchronize(detail::to_cuda(stream)));
}

void zero_async(void* device_ptr, size_t bytes, Stream stream) {
  if (bytes == 0) return;
  TS_CUDA_CHECK(cudaMemsetAsync(device_ptr, 0, bytes, detail::to_cuda(stream)));
}

void copy_on_device_async(void* device_dst, const void* device_src, size_t bytes, Stream stream) {
  if (bytes == 0) return;
  TS_CUDA_CHECK(cudaMemcpyAsync(device_dst, device_src, bytes, cudaMemcpyDeviceToDevice,
                                detail::to_cuda(stream)));
}

namespace detail {

cublasHandle_t cublas_handle(cudaStream_t stream) {
  PerDeviceState& state = t_state.current();
  if (state.cublas == nullptr) {
    TS_CUBLAS_CHECK(cublasCreate(&state.cublas));
    // Full FP32 products so results match the CPU kernels; TF32 would be a deliberate,
    // separate choice.
    TS_CUBLAS_CHECK(cublasSetMathMode(state.cublas, CUBLAS_DEFAULT_MATH));
  }
  TS_CUBLAS_CHECK(cublasSetStream(state.cublas, stream));
  return state.cublas;
}

double* reduction_scratch() {
  PerDeviceState& state = t_state.current();
  if (state.reduction == nullptr) {
    void* ptr = nullptr;
    TS_CUDA_CHECK(cudaMalloc(&ptr, (kMaxReductionBlocks + 1) * sizeof(double)));
    state.reduction = static_cast<double*>(ptr);
  }
  return state.reduction;
}

}  // namespace detail
}  // namespace tessera::kernels::cuda
