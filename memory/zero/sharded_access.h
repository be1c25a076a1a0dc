// ZeRO stages 1, 2 and 3 across data-parallel ranks (Rajbhandari et al. 2020). Rank r owns
// shard_range(numel, r, world) of the flat model: it keeps the AdamW moments of that shard
// only (stage 1), also only the gradients of that shard (stage 2), and also only the
// parameters of that shard (stage 3). docs/ZERO.md has the design and the memory formulas.
//
// A thin composition of three parts, each in its own file:
// - ShardedOptimizerState (optimizer_state.h): the shard and the whole buffers the stage
//   keeps, start-up from a by-range initialiser, the all-gather after each update (1-2);
// - GradBuckets (grad_buckets.h): reduce-scatter of gradient buckets launched as backward
//   reports layers, in place at stage 1, through scratch slots at stages 2-3;
// - Stage3Gatherer (stage3_gatherer.h): stage 3's per-layer all-gather with prefetch,
//   persistent small layers and the live bound.
// This class holds only the stage's policy: which part answers each ParamAccess call.
#pragma once

#include <cstdint>
#include <memory>

#include "memory/zero/grad_buckets.h"
#include "memory/zero/optimizer_state.h"
#include "memory/zero/stage3_gatherer.h"
#include "memory/zero/zero_plan.h"
#include "parallel/comm/process_group.h"
#include "runtime/core/params.h"

namespace tessera::memory {

class ShardedParamAccess final : public ParamAccess {
 public:
  // Collective. `init` gives the initial fp32 values of the rank's own elements (the same
  // model on every rank count: init_params_range, or a checkpoint read by range); they are
  // kept in fp32 as the master shard and rounded to options.dtype for the working copy. A
  // throw from `init` on any rank throws on every rank (see ShardedOptimizerState).
  ShardedParamAccess(const ParamRegistry& registry, parallel::ProcessGroup& dp_group,
                     const ZeroOptions& options, const ShardInit& init);
  // As above from a whole model in `initial` (registry.numel() values, identical on every
  // rank); tests use it.
  ShardedParamAccess(const ParamRegistry& registry, parallel::ProcessGroup& dp_group,
                     const ZeroOptions& options, const float* initial)
      : ShardedParamAccess(registry, dp_group, options, init_from_full(initial)) {}
  ~ShardedParamAccess() override;

  void* acquire(int layer) override;
  void release(int layer) override;
  void* grads(int layer) override;
  void grads_ready(int layer) override;

  // Before each micro-batch's forward (ParamAccess's lifecycle). training: the pass runs
  // backward (only training passes record and prefetch along the stage-3 acquire order).
  // sync: this micro-batch's gradients are reduced now; stage 1 keeps full gradients and
  // reduces once per accumulation window (sync only on the last micro-batch), stages 2-3
  // keep only a shard and so reduce every micro-batch whatever sync says.
  void begin_micro_batch(bool training, bool sync) override;
  // Waits for every launched reduction; the owned gradient shard then holds the average
  // over ranks of the accumulated gradients.
  void finish_gradients() override;
  void zero_grads() override;
  OptimizerShard shard() { return state_.shard(); }
  // After the optimizer changed the owned parameter shard: stages 1-2 all-gather the shards
  // into every rank's full parameters; stage 3 refreshes its whole (persistent) layers.
  void after_update() override;
  // Collective: the full fp32 parameters (the master weights when training in 16 bits) into
  // out (registry.numel() elements) on every rank.
  void gather_full(float* out) { state_.gather_full(out); }
  // One rank: the fp32 parameters [begin, end), read where they live.
  void read_weights(int64_t begin, int64_t end, float* out) {
    state_.read_weights(begin, end, out);
  }

  int stage() const { return options_.stage; }
  int num_buckets() const { return buckets_.num_buckets(); }
  int num_bucket_slots() const { return buckets_.num_slots(); }
  ZeroFixedBuffers fixed_buffers() const;
  // Stage 3: non-persistent parameter elements gathered (or being gathered) now, and the
  // most ever at once, against options.max_live_elems.
  int64_t live_elems() const { return gatherer_ ? gatherer_->live_elems() : 0; }
  int64_t peak_live_elems() const { return gatherer_ ? gatherer_->peak_live_elems() : 0; }
  int num_persistent_layers() const { return gatherer_ ? gatherer_->num_persistent_layers() : 0; }

 private:
  const ParamRegistry& registry_;
  ZeroOptions options_;
  // Destroyed in reverse: the gatherer and the buckets wait for their collectives before the
  // state's buffers they read and write go.
  ShardedOptimizerState state_;
  GradBuckets buckets_;
  std::unique_ptr<Stage3Gatherer> gatherer_;  // stage 3
  bool sync_ = true;
};

}  // namespace tessera::memory
