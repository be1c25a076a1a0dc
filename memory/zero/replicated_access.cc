#include "memory/zero/replicated_access.h"

#include <cstring>

#include "memory/zero/zero_plan.h"
#include "runtime/core/error.h"

namespace tessera::memory {

ReplicatedParamAccess::ReplicatedParamAccess(const ParamRegistry& registry, DType dtype,
                                             void* params, void* grads,
                                             parallel::ProcessGroup& dp_group,
                                             int64_t bucket_elems)
    : registry_(registry),
      dtype_(dtype),
      params_(static_cast<char*>(params)),
      grads_(static_cast<char*>(grads)),
      group_(dp_group) {
  bucket_of_layer_.assign(registry.num_layers(), -1);
  for (const BucketPlan& plan : plan_buckets(registry, bucket_elems)) {
    for (int l = plan.first_layer; l < plan.first_layer + plan.layers; ++l) {
      bucket_of_layer_[l] = static_cast<int>(buckets_.size());
    }
    buckets_.push_back({plan.begin, plan.end, plan.layers, plan.layers});
  }
}

void ReplicatedParamAccess::grads_ready(int layer) {
  if (!sync_) return;
  Bucket& b = buckets_.at(bucket_of_layer_.at(layer));
  TS_CHECK(b.pending > 0, "grads_ready({}) called twice in one backward pass", layer);
  if (--b.pending > 0) return;
  parallel::AllreduceOptions opts;
  opts.op = parallel::ReduceOp::Avg;
  in_flight_.push_back(group_.all_reduce(at(grads_, b.begin), static_cast<size_t>(b.end - b.begin),
                                         dtype_, opts));
}

void ReplicatedParamAccess::zero_grads() {
  std::memset(grads_, 0, static_cast<size_t>(registry_.numel()) * dtype_size(dtype_));
}

void ReplicatedParamAccess::finish_gradients() {
  for (auto& w : in_flight_) w->wait();
  in_flight_.clear();
  for (Bucket& b : buckets_) {
    TS_CHECK(b.pending == 0 || !sync_,
             "a synchronising backward pass left {} layer(s) of a gradient bucket unreported",
             b.pending);
    b.pending = b.layers;
  }
}

}  // namespace tessera::memory
