#include "memory/zero/replicated_access.h"

#include <cstring>

namespace tessera::memory {

namespace {

GradBucketOptions all_reduce_buckets(DType dtype, int64_t bucket_elems) {
  GradBucketOptions b;
  b.dtype = dtype;
  b.bucket_elems = bucket_elems;
  b.reduction = GradReduction::AllReduce;
  // Overlap is always on: without it the caller passes one bucket of the whole model, which
  // is waited for in finish_gradients.
  b.overlap_comm = true;
  return b;
}

}  // namespace

ReplicatedParamAccess::ReplicatedParamAccess(const ParamRegistry& registry, DType dtype,
                                             void* params, void* grads,
                                             parallel::ProcessGroup& dp_group, int64_t bucket_elems)
    : registry_(registry),
      dtype_(dtype),
      params_(static_cast<char*>(params)),
      grads_(static_cast<char*>(grads)),
      buckets_(registry, dp_group, all_reduce_buckets(dtype, bucket_elems), grads, nullptr) {}

void ReplicatedParamAccess::grads_ready(int layer) {
  if (!sync_) return;
  buckets_.ready(layer);
}

void ReplicatedParamAccess::zero_grads() {
  std::memset(grads_, 0, static_cast<size_t>(registry_.numel()) * dtype_size(dtype_));
}

void ReplicatedParamAccess::finish_gradients() { buckets_.drain(/*complete_pass=*/sync_); }

}  // namespace tessera::memory
