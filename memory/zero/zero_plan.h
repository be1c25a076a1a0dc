// How ZeRO lays out one rank's model state, computed without allocating anything: gradient
// buckets, bucket scratch slots, stage-3 persistent layers, padding, and the resulting bytes
// per category. The runtime (ReplicatedParamAccess, ShardedParamAccess) builds its buffers
// from this plan and `tessera estimate` prints it, so the estimate is the measurement.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "memory/flat_buffers.h"
#include "memory/offload/nvme_param_store.h"
#include "memory/offload/offload_options.h"
#include "runtime/core/copy_engine.h"
#include "runtime/core/dtype.h"
#include "runtime/core/params.h"

namespace tessera::memory {

struct ZeroOptions {
  int stage = 1;  // 0, 1, 2 or 3
  // Working precision of parameters and gradients: f32, or bf16 / f16 with fp32 master
  // weights in the optimizer shard.
  DType dtype = DType::F32;
  // Elements per gradient bucket (a layer larger than this is a bucket of its own).
  int64_t reduce_bucket_elems = 25'000'000;
  // Off: each bucket's reduction is waited for as soon as it is launched.
  bool overlap_comm = true;
  // Stage 3: elements gathered ahead of use, layers at or below this many elements kept
  // whole on every rank, and the most non-persistent elements gathered at once.
  int64_t prefetch_elems = 50'000'000;
  int64_t persistence_threshold = 100'000;
  int64_t max_live_elems = 1'000'000'000;
  // The optimizer steps through its shard in sub-groups of this many elements; with the
  // states on disk (offload_optimizer.device nvme) they are what is in memory at once.
  int64_t sub_group_elems = 1'000'000'000;
  OffloadOptimizerOptions offload_optimizer;
  // Stage 3: the working parameter shard in a swap file (device nvme).
  OffloadParamOptions offload_param;
  offload::AioOptions aio;
  // offload_optimizer cpu: the engine that copies between the device and the host tier's
  // page-locked pool (not owned). nullptr: the CPU backend's memcpy twin, made by the state.
  CopyEngine* copy_engine = nullptr;
  // The host tier copies each bucket's gradients as its reduction lands; off when something
  // changes them after the reduction (pipeline parallelism sums the tied embedding's), so
  // they are copied when the optimizer asks.
  bool copy_grads_as_reduced = true;
  bool params_on_disk() const {
    return stage == 3 && offload_param.device == OffloadDevice::Nvme;
  }
  // The states in the host tier (memory/offload/host_tier.h): offload_optimizer cpu, unless
  // the parameters are on disk (the update then writes them there, from states in memory).
  bool host_tier() const {
    return offload_optimizer.device == OffloadDevice::Cpu && !params_on_disk();
  }
  // The host tier's sub-groups are its two staging buffers' size, at most.
  static constexpr int64_t kHostTierSubGroupElems = 1 << 22;
  // The sub-group size the optimizer steps by: sub_group_elems, rounded up to a multiple of
  // NvmeParamStore::kAlignElems when the working parameters are on disk (each sub-group's
  // write must start aligned); at most kHostTierSubGroupElems in the host tier. The update is
  // element-wise, so the cut changes no bits.
  int64_t effective_sub_group_elems() const {
    constexpr int64_t kAlign = NvmeParamStore::kAlignElems;
    if (host_tier()) return std::min(sub_group_elems, kHostTierSubGroupElems);
    return params_on_disk() ? (sub_group_elems + kAlign - 1) / kAlign * kAlign : sub_group_elems;
  }
};

// A run of consecutive layers reduced together: [begin, end) of the flat model.
struct BucketPlan {
  int64_t begin = 0, end = 0;
  int first_layer = 0;  // lowest layer index in the bucket
  int layers = 0;
  int grad_reports = 1;  // of each of its layers: a bucket never mixes layers that differ
  int64_t numel() const { return end - begin; }
};
// Buckets in backward order (last layer first), each up to bucket_elems.
std::vector<BucketPlan> plan_buckets(const ParamRegistry& registry, int64_t bucket_elems);

// Stages 2-3 keep a bucket's gradients in a scratch slot until its reduce-scatter is done:
// one slot of its own for the bucket holding layer 0 when that layer is reported once (the
// whole tied embedding: the head writes into it first and the embedding last, so it stays
// open all of backward; a chunked embedding is reported twice instead and shares), and up to
// this many shared ones: with overlap, one for the bucket filling now and one for the bucket
// still being reduced; without, every reduction is waited for at once and one suffices.
inline constexpr int kSharedGradSlotsWithOverlap = 2;
inline constexpr int kSharedGradSlotsWithoutOverlap = 1;
// Element counts of the slots: [0] for layer 0's bucket when it has its own, then the shared
// ones.
std::vector<int64_t> plan_grad_slots(const std::vector<BucketPlan>& buckets, bool overlap_comm);
// Whether layer 0's bucket has a slot of its own (the first of plan_grad_slots).
bool first_bucket_has_own_slot(const std::vector<BucketPlan>& buckets);

// Bytes held by buffers whose size does not scale as 1/N (see docs/ZERO.md).
struct ZeroFixedBuffers {
  int64_t grad_bucket_bytes = 0;       // stage 2-3: gradient bucket slots (category grads)
  int64_t persistent_param_bytes = 0;  // stage 3: whole copies of small layers (params)
  int64_t padding_param_bytes = 0;     // stages 1-2: the full buffers' padding (params)
  int64_t padding_grad_bytes = 0;      // stage 1: the full gradient buffer's padding (grads)
};

// One rank's persistent model-state bytes at `stage` over `world` data-parallel ranks, fixed
// buffers included: parameters and gradients in the working dtype, AdamW moments (and, for a
// 16-bit working dtype, the fp32 master weights) in the optimizer: 4 + 4 + 8 bytes per
// parameter in f32, 2 + 2 + 12 in bf16/f16, each split as the stage prescribes. Stage-3
// gathered layers come and go and are bounded by max_live_elems on top.
struct ModelStateBytes {
  int64_t params = 0, grads = 0, optimizer = 0;
  // offload_optimizer nvme: optimizer is then its sub-group buffers, disk the swap file.
  int64_t disk = 0;
  int64_t param_disk = 0;  // of disk: offload_param nvme's swap file (the rest: the optimizer's)
  // offload_optimizer cpu (the host tier): page-locked bytes, counted in the categories too:
  // the fp32 states (optimizer), the gradients' host copy (grads), two staging buffers (params).
  int64_t pinned = 0;
  ZeroFixedBuffers fixed;
  int64_t total() const { return params + grads + optimizer; }
};
ModelStateBytes plan_model_state(const ParamRegistry& registry, const ZeroOptions& options,
                                 int rank, int world);
// Whether the state is partitioned (ShardedParamAccess) at this stage and world: stages 1-3 on
// several ranks, or on one with the optimizer offloaded (which works on a shard's states).
bool plan_partitioned(const ZeroOptions& options, int world);
// Stage 3 on several ranks: the most bytes of gathered (non-persistent) layers at once: the
// layer in use plus the prefetch window, within max_live_elems. 0 otherwise.
int64_t plan_gathered_bytes(const ParamRegistry& registry, const ZeroOptions& options, int world);
// The model state's peak on one rank: plan_model_state's total plus plan_gathered_bytes (the
// activations come on top).
int64_t plan_peak_bytes(const ParamRegistry& registry, const ZeroOptions& options, int rank,
                        int world);

}  // namespace tessera::memory
