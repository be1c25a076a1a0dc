#include "runtime/kernels/ops.h"

#include "runtime/core/error.h"
#include "runtime/kernels/cpu/ops_table.h"
#include "runtime/kernels/cuda_ops_table.h"

namespace tessera::kernels {

template <typename T>
std::unique_ptr<Ops<T>> make_ops(Device device, DType storage) {
  if (device.type == DeviceType::CPU) return cpu::make_cpu_ops<T>(storage);
  if constexpr (std::is_same_v<T, float>) {
    if (device.type == DeviceType::CUDA) return cuda::make_cuda_ops(device, storage);
  }
  TS_THROW(InvalidArgument, "no ops table for {} computing in {}: the CUDA tables compute in float",
           device.str(), dtype_name(dtype_of<T>()));
}

template std::unique_ptr<Ops<float>> make_ops<float>(Device, DType);
template std::unique_ptr<Ops<double>> make_ops<double>(Device, DType);

}  // namespace tessera::kernels
