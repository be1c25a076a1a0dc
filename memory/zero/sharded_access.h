// ZeRO stages 1, 2 and 3 across data-parallel ranks (Rajbhandari et al. 2020). Rank r owns
// shard_range(numel, r, world) of the flat model: it keeps the AdamW moments of that shard
// only (stage 1), also only the gradients of that shard (stage 2), and also only the
// parameters of that shard (stage 3). docs/ZERO.md has the design and the memory formulas.
//
// Gradients travel in buckets of consecutive layers, taken in backward order, launched from
// grads_ready() as soon as every layer of a bucket is done, so communication overlaps the
// rest of backward. A bucket is one contiguous range of the flat model, and the piece of it
// rank r receives is its intersection with rank r's shard: one reduce_scatter_v per bucket.
//
// Stage 3 gathers a layer's parameters with one all_gather_v (each rank sends its shard's
// intersection with the layer) into a buffer that lives from gather to release, prefetches
// the next layers of the recorded acquire order, and keeps small layers whole.
#pragma once

#include <cstdint>
#include <vector>

#include "memory/flat_buffers.h"
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
  float* master = nullptr;   // fp32 weights the optimizer updates: params itself in f32
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
};

class ShardedParamAccess final : public ParamAccess {
 public:
  // `initial` holds registry.numel() parameter values, identical on every rank; they are
  // rounded to options.dtype for the working copy and kept in fp32 as the master shard.
  ShardedParamAccess(const ParamRegistry& registry, parallel::ProcessGroup& dp_group,
                     const ZeroOptions& options, const float* initial);
  ~ShardedParamAccess() override;

  void* acquire(int layer) override;
  void release(int layer) override;
  void* grads(int layer) override;
  void grads_ready(int layer) override;

  // Before each micro-batch's forward (ParamAccess's lifecycle). training: the pass runs backward (only
  // training passes record and prefetch along the stage-3 acquire order). sync: this micro-batch's gradients
  // are reduced now; stage 1 keeps full gradients and reduces once per accumulation window
  // (sync only on the last micro-batch), stages 2-3 keep only a shard and so reduce every
  // micro-batch whatever sync says.
  void begin_micro_batch(bool training, bool sync) override;
  // Waits for every launched reduction; the owned gradient shard then holds the average
  // over ranks of the accumulated gradients.
  void finish_gradients() override;
  void zero_grads() override;
  OptimizerShard shard();
  // After the optimizer changed the owned parameter shard: stages 1-2 all-gather the shards
  // into every rank's full parameters; stage 3 refreshes its whole (persistent) layers.
  void after_update() override;
  // Collective: the full fp32 parameters (the master weights when training in 16 bits) into
  // out (registry.numel() elements) on every rank.
  void gather_full(float* out);

  int stage() const { return options_.stage; }
  int num_buckets() const { return static_cast<int>(buckets_.size()); }
  int num_bucket_slots() const { return static_cast<int>(slots_.size()); }
  ZeroFixedBuffers fixed_buffers() const;
  // Stage 3: non-persistent parameter elements gathered (or being gathered) now, and the
  // most ever at once, against options.max_live_elems.
  int64_t live_elems() const { return live_elems_; }
  int64_t peak_live_elems() const { return peak_live_elems_; }
  int num_persistent_layers() const;

 private:
  struct Bucket {
    int64_t begin = 0, end = 0;
    int layers = 0;
    int pending = 0;        // layers not ready yet in this pass
    int slot = -1;          // stages 2-3: the scratch slot holding its gradients
    std::vector<size_t> counts;  // elements of the bucket each rank receives
  };
  struct InFlight {
    int bucket = 0;
    parallel::WorkPtr work;
  };
  struct LayerState {
    bool persistent = false;
    Storage gathered;  // stage 3: the whole layer, while gathered
    parallel::WorkPtr gathering;
    int in_use = 0;
    std::vector<size_t> counts;  // elements of the layer each rank contributes
  };

  ShardRange owned_piece(int64_t begin, int64_t end) const;  // [begin,end) ∩ own shard
  std::vector<size_t> piece_counts(int64_t begin, int64_t end) const;
  char* at(const Storage& s, int64_t elem) const {
    return static_cast<char*>(s.data()) + elem * static_cast<int64_t>(elem_size_);
  }
  char* param_shard_ptr() const;
  char* grad_shard_ptr() const;
  // Stages 2-3: bucket b's gradients in a scratch slot (slot 0 belongs to the bucket of
  // layer 0; the others are shared, reclaimed from the oldest reduction when none is free).
  char* bucket_grads(int b);
  void complete_oldest();
  void complete(const InFlight& f);
  // Waits for every reduction and readies the buckets for the next pass.
  void drain();
  // Stage 3.
  void start_gather(int layer);
  void wait_gather(int layer);
  void free_gathered(int layer);
  std::vector<int> upcoming_window() const;  // layers wanted within prefetch_elems of pos_
  void prefetch();
  void free_all_gathered();

  const ParamRegistry& registry_;
  parallel::ProcessGroup& group_;
  ZeroOptions options_;
  size_t elem_size_;  // bytes per working element
  int rank_, world_;
  int64_t numel_, padded_;
  ShardRange shard_;  // unclipped: may reach into the padding

  Storage params_;      // stages 1-2: padded full buffer; stage 3: the shard
  Storage grads_;       // stage 1: padded full buffer; stages 2-3: the shard
  Storage master_;                // 16-bit working dtype: the fp32 shard
  Storage exp_avg_, exp_avg_sq_;  // the shard

  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_layer_;
  std::vector<Storage> slots_;
  std::vector<int> free_slots_;
  std::vector<InFlight> in_flight_;  // issue order
  bool sync_ = true;

  std::vector<LayerState> layers_;
  std::vector<int> trace_;  // stage 3: layer acquire order of a training pass
  bool recording_ = false;
  bool following_ = false;  // this pass still matches trace_
  size_t pos_ = 0;          // next trace_ entry
  int64_t live_elems_ = 0;
  int64_t peak_live_elems_ = 0;
};

}  // namespace tessera::memory
