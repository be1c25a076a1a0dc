// The CUDA ops table; callers use kernels::make_ops (runtime/kernels/ops.h).
#pragma once

#include <memory>

#include "runtime/kernels/ops.h"

namespace tessera::kernels::cuda {

// f32, bf16 or f16 storage on `device`, computing in fp32 on a stream of the table's own.
// Throws NotCompiled in a build without CUDA, InvalidArgument when the device is absent.
std::unique_ptr<Ops<float>> make_cuda_ops(Device device, DType storage);

}  // namespace tessera::kernels::cuda
