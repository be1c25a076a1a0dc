// ZeRO stage 0 across data-parallel ranks: parameters, gradients and optimizer state are
// replicated; gradients are averaged by bucketed all-reduces launched from grads_ready() as
// soon as every layer of a bucket has finished backward, so communication overlaps the rest
// of backward (llm.c / PyTorch DDP style). The buckets are GradBuckets (grad_buckets.h), the
// same code ZeRO stages 1-3 reduce-scatter with, here all-reducing in place.
#pragma once

#include <cstdint>
#include <vector>

#include "memory/zero/grad_buckets.h"
#include "parallel/comm/process_group.h"
#include "runtime/core/params.h"

namespace tessera::memory {

class ReplicatedParamAccess final : public ParamAccess {
 public:
  // params and grads: registry.numel() elements of `dtype` (f32, bf16 or f16), all-reduced in
  // that dtype.
  ReplicatedParamAccess(const ParamRegistry& registry, DType dtype, void* params, void* grads,
                        parallel::ProcessGroup& dp_group, int64_t bucket_elems);

  void* acquire(int layer) override { return at(params_, registry_.layer(layer).begin); }
  void release(int) override {}
  void* grads(int layer) override { return buckets_.grads(layer); }
  void grads_ready(int layer) override;

  void zero_grads() override;
  // Only the last micro-batch of an accumulation window reduces: the others accumulate
  // locally, and one reduction per optimizer step averages the sum.
  void begin_micro_batch(bool /*training*/, bool last) override { sync_ = last; }
  // Blocks until every launched reduction finished (rethrowing a communication failure);
  // gradients are then averaged across ranks and identical on all of them.
  void finish_gradients() override;

  int num_buckets() const { return buckets_.num_buckets(); }
  // Elements all-reduced per optimizer step (for the communication accounting).
  int64_t elems_per_sync() const { return registry_.numel(); }

 private:
  char* at(char* base, int64_t elem) const { return base + elem * dtype_size(dtype_); }

  const ParamRegistry& registry_;
  DType dtype_;
  char* params_;
  char* grads_;
  GradBuckets buckets_;
  bool sync_ = true;
};

}  // namespace tessera::memory
