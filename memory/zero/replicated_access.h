// ZeRO stage 0 across data-parallel ranks: parameters, gradients and optimizer state are
// replicated; gradients are averaged by bucketed all-reduces launched from grads_ready() as
// soon as every layer of a bucket has finished backward, so communication overlaps the rest
// of backward (llm.c / PyTorch DDP style).
//
// Buckets are runs of consecutive layers taken in backward order (last layer first) until
// they reach `bucket_elems`; since layers are contiguous in the flat buffer, a bucket is one
// contiguous range and one collective.
#pragma once

#include <cstdint>
#include <vector>

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
  void* grads(int layer) override { return at(grads_, registry_.layer(layer).begin); }
  void grads_ready(int layer) override;

  void zero_grads() override;
  // Only the last micro-batch of an accumulation window reduces: the others accumulate
  // locally, and one reduction per optimizer step averages the sum.
  void begin_micro_batch(bool /*training*/, bool last) override { sync_ = last; }
  // Blocks until every launched reduction finished (rethrowing a communication failure);
  // gradients are then averaged across ranks and identical on all of them.
  void finish_gradients() override;

  int num_buckets() const { return static_cast<int>(buckets_.size()); }
  // Elements all-reduced per optimizer step (for the communication accounting).
  int64_t elems_per_sync() const { return registry_.numel(); }

 private:
  struct Bucket {
    int64_t begin = 0, end = 0;
    int layers = 0;   // layers in the bucket
    int pending = 0;  // layers not ready yet in this backward pass
  };

  char* at(char* base, int64_t elem) const { return base + elem * dtype_size(dtype_); }

  const ParamRegistry& registry_;
  DType dtype_;
  char* params_;
  char* grads_;
  parallel::ProcessGroup& group_;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_layer_;
  std::vector<parallel::WorkPtr> in_flight_;
  bool sync_ = true;
};

}  // namespace tessera::memory
