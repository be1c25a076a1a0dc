// The CPU ops tables; callers use kernels::make_ops (runtime/kernels/ops.h).
#pragma once

#include <memory>

#include "runtime/kernels/ops.h"

namespace tessera::kernels::cpu {

template <typename T>
std::unique_ptr<Ops<T>> make_cpu_ops(DType storage);

}  // namespace tessera::kernels::cpu
