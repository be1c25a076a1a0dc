#include "parallel/tp/conjugate.h"

namespace tessera::parallel::tp {

WorkPtr copy_to_region_backward(ProcessGroup& group, void* grad, size_t count, DType dtype) {
  return group.all_reduce(grad, count, dtype);
}

WorkPtr reduce_from_region_forward(ProcessGroup& group, void* partial, size_t count, DType dtype) {
  return group.all_reduce(partial, count, dtype);
}

WorkPtr gather_sequence_forward(ProcessGroup& group, const void* local, void* full,
                                size_t local_count, DType dtype) {
  return group.all_gather(local, full, local_count, dtype);
}

WorkPtr gather_sequence_backward(ProcessGroup& group, const void* full_grad, void* local_grad,
                                 size_t local_count, DType dtype) {
  return group.reduce_scatter(full_grad, local_grad, local_count, dtype);
}

WorkPtr reduce_scatter_sequence_forward(ProcessGroup& group, const void* full, void* local,
                                        size_t local_count, DType dtype) {
  return group.reduce_scatter(full, local, local_count, dtype);
}

WorkPtr reduce_scatter_sequence_backward(ProcessGroup& group, const void* local_grad,
                                         void* full_grad, size_t local_count, DType dtype) {
  return group.all_gather(local_grad, full_grad, local_count, dtype);
}

}  // namespace tessera::parallel::tp
