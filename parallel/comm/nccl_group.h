// The `nccl` backend: buffers are device pointers on this rank's GPU. The communicator is
// bootstrapped by broadcasting an ncclUniqueId over another ProcessGroup (normally MPI).
// Each collective waits (cudaStreamWaitEvent) for work already queued on the legacy default
// stream, runs on the group's communication stream, and records an event; Work::wait blocks
// the host on that event (polling, so the timeout holds and NCCL's async errors surface).
// 16-bit reductions use NCCL's native f16/bf16 reduction.
//
// Built when TESSERA_WITH_CUDA; otherwise no_nccl.cc throws NotCompiled.
#pragma once

#include "parallel/comm/process_group.h"

namespace tessera::parallel {

bool nccl_compiled();
// Number of usable CUDA devices; 0 when CUDA is not compiled in or no driver/device is present.
int cuda_device_count();
// Collective over `bootstrap`. device < 0 picks bootstrap.rank() % cuda_device_count().
ProcessGroupPtr make_nccl_group(ProcessGroup& bootstrap, int device = -1);

}  // namespace tessera::parallel
