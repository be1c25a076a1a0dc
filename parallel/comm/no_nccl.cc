// Built when TESSERA_WITH_CUDA is off.
#include "parallel/comm/nccl_group.h"
#include "runtime/core/error.h"

namespace tessera::parallel {

bool nccl_compiled() { return false; }
int cuda_device_count() { return 0; }
ProcessGroupPtr make_nccl_group(ProcessGroup&, int) {
  TS_THROW(
      NotCompiled,
      "make_nccl_group: tessera was built without CUDA; reconfigure with -DTESSERA_WITH_CUDA=ON");
}

}  // namespace tessera::parallel
