#include "memory/zero/sharded_access.h"

#include "runtime/core/error.h"

namespace tessera::memory {

namespace {

const ZeroOptions& checked(const ZeroOptions& options) {
  TS_CHECK(options.stage >= 1 && options.stage <= 3,
           "ShardedParamAccess runs ZeRO stages 1-3, not {}", options.stage);
  check_working_dtype(options.dtype);
  return options;
}

GradBucketOptions bucket_options(const ZeroOptions& options) {
  GradBucketOptions b;
  b.dtype = options.dtype;
  b.bucket_elems = options.reduce_bucket_elems;
  b.reduction = GradReduction::ReduceScatter;
  b.slots = options.stage >= 2;
  b.overlap_comm = options.overlap_comm;
  return b;
}

GatherOptions gather_options(const ZeroOptions& options) {
  GatherOptions g;
  g.dtype = options.dtype;
  g.prefetch_elems = options.prefetch_elems;
  g.persistence_threshold = options.persistence_threshold;
  g.max_live_elems = options.max_live_elems;
  return g;
}

}  // namespace

ShardedParamAccess::ShardedParamAccess(const ParamRegistry& registry,
                                       parallel::ProcessGroup& dp_group, const ZeroOptions& options,
                                       const ShardInit& init)
    : registry_(registry),
      options_(checked(options)),
      state_(registry, dp_group, options, init),
      buckets_(registry, dp_group, bucket_options(options),
               options.stage == 1 ? state_.full_grads() : nullptr,
               options.stage >= 2 ? state_.grad_shard() : nullptr) {
  if (options.stage == 3) {
    gatherer_ = std::make_unique<Stage3Gatherer>(registry, dp_group, gather_options(options),
                                                 state_.param_shard(), state_.param_store());
    gatherer_->refresh_persistent();  // the small layers, whole, from the fresh shards
  }
  HostTier* host = state_.host_tier();
  if (host != nullptr && options.copy_grads_as_reduced) {
    // The last micro-batch's reductions are the step's gradients: each bucket's piece goes to
    // the host as it lands, while backward goes on.
    const int64_t first = state_.layout().shard.begin;
    buckets_.on_reduced([this, host, first](int64_t begin, int64_t end) {
      if (sync_) host->grads_ready(begin - first, end - first);
    });
  }
}

void ShardedParamAccess::zero_grads() {
  // A copy of the last step's gradients may still be reading them (a skipped step's).
  if (state_.host_tier() != nullptr) state_.host_tier()->start_pass();
  state_.zero_grads();
}

ShardedParamAccess::~ShardedParamAccess() = default;

void* ShardedParamAccess::acquire(int layer) {
  if (gatherer_) return gatherer_->acquire(layer);
  return static_cast<char*>(state_.full_params()) +
         registry_.layer(layer).begin * static_cast<int64_t>(dtype_size(options_.dtype));
}

void ShardedParamAccess::release(int layer) {
  if (gatherer_) gatherer_->release(layer);
}

void* ShardedParamAccess::grads(int layer) { return buckets_.grads(layer); }

void ShardedParamAccess::grads_ready(int layer) {
  if (options_.stage == 1 && !sync_) return;  // stage 1 accumulates full gradients locally
  buckets_.ready(layer);
}

void ShardedParamAccess::begin_micro_batch(bool training, bool sync) {
  // A bucket's slot is reused by the next pass: its previous reduction must have landed.
  buckets_.drain(/*complete_pass=*/false);
  sync_ = sync;
  if (gatherer_) gatherer_->begin_pass(training);
}

void ShardedParamAccess::finish_gradients() {
  buckets_.drain(/*complete_pass=*/false);
  if (gatherer_) gatherer_->end_training_pass();
}

void ShardedParamAccess::after_update() {
  if (gatherer_) {
    gatherer_->refresh_persistent();
  } else {
    state_.publish_update();
  }
}

ZeroFixedBuffers ShardedParamAccess::fixed_buffers() const {
  ZeroFixedBuffers f;
  f.grad_bucket_bytes = buckets_.slot_bytes();
  if (gatherer_) f.persistent_param_bytes = gatherer_->persistent_bytes();
  f.padding_param_bytes = state_.padding_param_bytes();
  f.padding_grad_bytes = state_.padding_grad_bytes();
  return f;
}

}  // namespace tessera::memory
