// The optimizer-state owner of ZeRO stages 1-3: what rank r keeps for its shard,
// shard_range(numel, r, world) of the flat model, and the buffers the stage says it keeps whole.
//
// - Always the shard's fp32 AdamW moments (exp_avg, exp_avg_sq) and, with a 16-bit working
//   dtype, its fp32 master weights.
// - Parameters in the working dtype: the whole model at stages 1-2 (padded at the end, so
//   the updated shards all-gather in place), the shard alone at stage 3.
//   With offload_param nvme (stage 3) the shard lives in a swap file (NvmeParamStore).
// - Gradients in the working dtype: the whole model at stage 1 (it accumulates full gradients
//   and reduce-scatters once per step), the shard alone at stages 2-3.
//
// Start-up builds the shard from an initialiser that produces only the shard's own elements
// (seeded init by range, or a checkpoint read by range), so no rank ever holds the whole
// fp32 model; stages 1-2 then all-gather their whole working copy from the shards.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "memory/flat_buffers.h"
#include "memory/offload/host_tier.h"
#include "memory/offload/nvme_param_store.h"
#include "memory/state_store.h"
#include "memory/zero/zero_plan.h"
#include "parallel/comm/process_group.h"
#include "runtime/core/params.h"
#include "runtime/core/storage.h"

namespace tessera::memory {

// The part of the flat model this rank's optimizer updates, with pointers that index it from
// range.begin (range is the rank's shard clipped to the model, so it may be empty).
struct OptimizerShard {
  ShardRange range;
  DType dtype = DType::F32;  // of params and grads
  void* params = nullptr;    // the working parameters
  void* grads = nullptr;
  // The fp32 states, each nullptr when it lives on disk (offload_optimizer.device nvme):
  // reach them through `states` then.
  float* master = nullptr;  // fp32 weights the optimizer updates: params itself in f32
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
  StateStore* states = nullptr;  // all three, by sub-group, wherever they live
  // offload_param nvme: params is nullptr and the working shard lives here; the optimizer
  // writes each updated sub-group through write_buffer() / commit().
  NvmeParamStore* param_store = nullptr;
  // offload_optimizer cpu (the host tier): the states are in its page-locked pool, the update
  // reads host_grads() and writes the working parameters back through it (ParamWriteBack).
  HostTier* host_tier = nullptr;
};

// Writes the initial fp32 values of flat elements [range.begin, range.end) into
// out[0, range.numel()).
using ShardInit = std::function<void(ShardRange range, float* out)>;
// An initialiser copying from a whole model (tests and small tools).
ShardInit init_from_full(const float* full);

class ShardedOptimizerState {
 public:
  // Collective. Runs `init` for the rank's own elements on every rank, agreed: when it throws
  // on any rank, every rank throws that message (parallel/comm/agree.h) before any other
  // collective. Stages 1-2 then all-gather the whole working parameters.
  // options: the stage, the working dtype, the sub-group size and where the fp32 states live
  // (offload_optimizer nvme: a swap file per rank; cpu: the host tier's page-locked pool,
  // copied to and from through options.copy_engine, or the memcpy twin on the CPU backend).
  ShardedOptimizerState(const ParamRegistry& registry, parallel::ProcessGroup& group,
                        const ZeroOptions& options, const ShardInit& init);
  ShardedOptimizerState(const ParamRegistry& registry, parallel::ProcessGroup& group, int stage,
                        DType dtype, const ShardInit& init);

  int stage() const { return stage_; }
  DType dtype() const { return dtype_; }
  const ShardLayout& layout() const { return layout_; }
  OptimizerShard shard();
  StateStore& states() { return *states_; }
  // Stage 3 with offload_param nvme: the working shard on disk, else nullptr.
  NvmeParamStore* param_store() const { return param_store_.get(); }
  // offload_optimizer cpu: the host tier, else nullptr.
  HostTier* host_tier() const { return host_tier_.get(); }
  // Stages 1-2: the whole working parameters (layout().padded elements).
  void* full_params() const;
  // The working parameters of the shard (layout().shard, padding included); nullptr when
  // they live in param_store().
  void* param_shard() const;
  // Stage 1: the whole gradients (layout().padded elements).
  void* full_grads() const;
  // The gradients of the shard (layout().shard, padding included).
  void* grad_shard() const;
  void zero_grads() { grads_.zero(); }
  // Collective, stages 1-2, after the optimizer changed the shard: all-gathers the updated
  // shards into every rank's whole parameters (stage 3's gatherer refreshes its own copies).
  void publish_update();
  // Collective: the full fp32 parameters (the master weights when training in 16 bits) into
  // out (registry.numel() elements) on every rank.
  void gather_full(float* out);
  // One rank (the shard is the whole model): the fp32 parameters [begin, end) into out, read
  // from wherever they live (the master weights on disk included), so nothing whole is made.
  void read_weights(int64_t begin, int64_t end, float* out);
  // Bytes of padding in the whole buffers (stages 1-2 params, stage 1 grads).
  int64_t padding_param_bytes() const;
  int64_t padding_grad_bytes() const;

 private:
  char* elem(const Storage& s, int64_t i) const {
    return static_cast<char*>(s.data()) + i * static_cast<int64_t>(elem_size_);
  }

  parallel::ProcessGroup& group_;
  std::unique_ptr<CopyEngine> own_engine_;  // the host tier's, when none was given
  int stage_;
  DType dtype_;
  size_t elem_size_;
  ShardLayout layout_;
  Storage params_;                // stages 1-2: padded full buffer; stage 3: the shard (in memory)
  Storage grads_;                 // stage 1: padded full buffer; stages 2-3: the shard
  Storage master_;                // 16-bit working dtype: the fp32 shard (states in memory)
  Storage exp_avg_, exp_avg_sq_;  // the shard (states in memory)
  std::unique_ptr<StateStore> states_;
  std::unique_ptr<NvmeParamStore> param_store_;
  // Declared last: its copies read and write the buffers above until it is gone.
  std::unique_ptr<HostTier> host_tier_;
  // The fp32 master is a state of its own, not the f32 working shard: 16-bit training,
  // parameters on disk, or the host tier (its master lives on the host, the shard on the device).
  bool master_apart_ = false;
};

}  // namespace tessera::memory
