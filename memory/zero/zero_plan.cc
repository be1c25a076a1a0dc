#include "memory/zero/zero_plan.h"

#include <algorithm>

#include "memory/offload/host_tier.h"
#include "memory/offload/nvme_state_store.h"
#include "runtime/core/error.h"

namespace tessera::memory {

std::vector<BucketPlan> plan_buckets(const ParamRegistry& registry, int64_t bucket_elems) {
  TS_CHECK(bucket_elems >= 1, "reduce_bucket_size must be >= 1, got {}", bucket_elems);
  std::vector<BucketPlan> buckets;
  // Empty layers (another pipeline stage's, in a pipeline rank's registry) are never
  // reported: they belong to no bucket, and a bucket never spans one.
  auto empty = [&](int l) { return registry.layer(l).numel() == 0; };
  for (int l = registry.num_layers() - 1; l >= 0;) {
    if (empty(l)) {
      --l;
      continue;
    }
    BucketPlan b;
    b.end = registry.layer(l).end;
    b.grad_reports = registry.layer(l).grad_reports;
    while (l >= 0 && !empty(l) &&
           (b.layers == 0 || (b.end - registry.layer(l).begin <= bucket_elems &&
                              registry.layer(l).grad_reports == b.grad_reports))) {
      b.begin = registry.layer(l).begin;
      b.first_layer = l;
      ++b.layers;
      --l;
    }
    buckets.push_back(b);
  }
  return buckets;
}

bool first_bucket_has_own_slot(const std::vector<BucketPlan>& buckets) {
  for (const BucketPlan& b : buckets) {
    if (b.first_layer == 0) return b.grad_reports == 1;
  }
  return false;
}

std::vector<int64_t> plan_grad_slots(const std::vector<BucketPlan>& buckets, bool overlap_comm) {
  std::vector<int64_t> slots;
  int64_t other_max = 0;
  const bool own = first_bucket_has_own_slot(buckets);
  for (const BucketPlan& b : buckets) {
    if (own && b.first_layer == 0) {
      slots.insert(slots.begin(), b.numel());
    } else {
      other_max = std::max(other_max, b.numel());
    }
  }
  const int shared =
      std::min<int>(overlap_comm ? kSharedGradSlotsWithOverlap : kSharedGradSlotsWithoutOverlap,
                    static_cast<int>(buckets.size()) - (own ? 1 : 0));
  for (int i = 0; i < shared; ++i) slots.push_back(other_max);
  return slots;
}

ModelStateBytes plan_model_state(const ParamRegistry& registry, const ZeroOptions& options,
                                 int rank, int world) {
  TS_CHECK(options.stage >= 0 && options.stage <= 3, "ZeRO stage {} does not exist", options.stage);
  check_working_dtype(options.dtype);
  const int64_t kW = static_cast<int64_t>(dtype_size(options.dtype));  // working bytes
  // fp32 moments, and fp32 master weights beside 16-bit working ones.
  const int64_t kOptimizer = (is_16bit(options.dtype) ? 3 : 2) * static_cast<int64_t>(sizeof(float));
  const int64_t numel = registry.numel();
  ModelStateBytes b;
  if (!plan_partitioned(options, world)) {
    // Replicated: one rank at any stage is stage 0 (nothing to partition).
    b.params = b.grads = numel * kW;
    b.optimizer = numel * kOptimizer;
    return b;
  }
  const int64_t padded = padded_numel(numel, world);
  const int64_t shard = shard_range(numel, rank, world).numel();
  const int64_t pad_bytes = (padded - numel) * kW;
  b.optimizer = shard * kOptimizer;
  const int64_t sub_group = options.effective_sub_group_elems();
  if (options.offload_optimizer.device == OffloadDevice::Nvme) {
    const NvmeStateStore::Sizes swap =
        NvmeStateStore::plan(shard, sub_group, !is_16bit(options.dtype) && !options.params_on_disk(),
                             options.offload_optimizer);
    b.optimizer = swap.buffer_bytes;
    b.disk = swap.file_bytes;
  } else if (options.host_tier() || (options.params_on_disk() && !is_16bit(options.dtype))) {
    b.optimizer = shard * 3 * static_cast<int64_t>(sizeof(float));  // a master of its own
  }
  if (options.stage <= 2) {
    b.params = padded * kW;
    b.fixed.padding_param_bytes = pad_bytes;
  } else {
    b.params = shard * kW;
    const ShardLayout layout(numel, rank, world);
    int64_t largest_piece = 0;
    for (int l = 0; l < registry.num_layers(); ++l) {
      const LayerRange& r = registry.layer(l);
      if (r.numel() <= options.persistence_threshold) b.fixed.persistent_param_bytes += r.numel() * kW;
      largest_piece = std::max(largest_piece, layout.piece(r.begin, r.end).numel());
    }
    if (options.params_on_disk()) {
      // The resident part and the read and write buffers; one rank's gathered layers are
      // its read buffers.
      const NvmeParamStore::Sizes swap =
          NvmeParamStore::plan(layout.shard.numel(), options.dtype, largest_piece,
                               std::min(sub_group, layout.shard.numel()), options.offload_param);
      b.params = swap.memory_bytes;
      b.disk += swap.file_bytes;
      b.param_disk = swap.file_bytes;
    }
    b.params += b.fixed.persistent_param_bytes;
  }
  if (options.stage == 1) {
    b.grads = padded * kW;
    b.fixed.padding_grad_bytes = pad_bytes;
  } else {
    b.grads = shard * kW;
    for (int64_t slot : plan_grad_slots(plan_buckets(registry, options.reduce_bucket_elems),
                                        options.overlap_comm)) {
      b.fixed.grad_bucket_bytes += slot * kW;
    }
    b.grads += b.fixed.grad_bucket_bytes;
  }
  if (options.host_tier()) {
    b.pinned = HostTier::plan_pinned_bytes(shard, options.dtype, sub_group);
    b.grads += shard * kW;                                  // the gradients' host copy
    b.params += b.pinned - shard * (kW + 3 * static_cast<int64_t>(sizeof(float)));  // staging
  }
  return b;
}

bool plan_partitioned(const ZeroOptions& options, int world) {
  return options.stage >= 1 &&
         (world > 1 || options.offload_optimizer.device != OffloadDevice::None ||
          options.params_on_disk());
}

int64_t plan_gathered_bytes(const ParamRegistry& registry, const ZeroOptions& options, int world) {
  if (options.stage != 3 || !plan_partitioned(options, world)) return 0;
  // One rank with the parameters on disk gathers into its read buffers (in params).
  if (options.params_on_disk() && world == 1) return 0;
  int64_t largest = 0;
  for (int l = 0; l < registry.num_layers(); ++l) {
    const int64_t n = registry.layer(l).numel();
    if (n > options.persistence_threshold) largest = std::max(largest, n);
  }
  const int64_t live = std::min(options.max_live_elems, largest + options.prefetch_elems);
  return live * static_cast<int64_t>(dtype_size(options.dtype));
}

int64_t plan_peak_bytes(const ParamRegistry& registry, const ZeroOptions& options, int rank,
                        int world) {
  return plan_model_state(registry, options, rank, world).total() +
         plan_gathered_bytes(registry, options, world);
}

}  // namespace tessera::memory
