// DeepSpeed's offload settings (zero_optimization.offload_optimizer / offload_param), as the
// memory layer acts on them. The config parser fills them with DeepSpeed's defaults and its
// rules (which ZeRO stage allows which device); docs/OFFLOAD.md says what each does here.
#pragma once

#include <cstdint>
#include <string>

#include "memory/offload/async_io.h"

namespace tessera::memory {

enum class OffloadDevice { None, Cpu, Nvme };
const char* offload_device_name(OffloadDevice device);

struct OffloadOptimizerOptions {
  OffloadDevice device = OffloadDevice::None;
  std::string nvme_path = "/local_nvme";
  // Sub-group buffers are counted in states: each sub-group swaps 3 (fp32 master, exp_avg,
  // exp_avg_sq; 2 in fp32, whose master is the working copy), so buffer_count / states
  // sub-groups are in memory at once. Reading ahead needs 2, overlapping the write-back
  // behind as well 3.
  int buffer_count = 4;
  bool pin_memory = false;      // CUDA backend: page-locked host buffers
  bool pipeline_read = false;   // read the next sub-groups while one is updated
  bool pipeline_write = false;  // write a sub-group back while the next is updated
  bool fast_init = false;       // parsed: start-up always writes each sub-group once
};

struct OffloadParamOptions {
  OffloadDevice device = OffloadDevice::None;
  std::string nvme_path = "/local_nvme";
  int buffer_count = 5;
  int64_t buffer_size = 100'000'000;  // elements
  int64_t max_in_cpu = 1'000'000'000;  // elements
  bool pin_memory = false;
};

}  // namespace tessera::memory
