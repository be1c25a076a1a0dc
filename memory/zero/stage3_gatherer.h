// ZeRO stage 3's parameter gatherer: a rank holds only its parameter shard, so a layer's
// parameters exist whole only from acquire() to release().
//
// - Gather: one all_gather_v per layer (each rank sends its shard's piece of the layer) into a
//   buffer of the layer's size that lives while the layer is gathered.
// - Persistence: layers of at most persistence_threshold elements (LayerNorms, biases-only
//   layers) stay whole on every rank; gathering them every pass would cost more in latency
//   than they take in memory. refresh_persistent() re-gathers them after each update.
// - Prefetch: the first training pass records the order layers are acquired in; later
//   training passes that follow it gather the next layers (up to prefetch_elems ahead) while
//   the current one computes. A pass that leaves the order gathers on demand from then on.
// - Live bound: gathered non-persistent elements never exceed max_live_elems; acquire evicts
//   prefetched layers nobody holds to make room, and prefetching never evicts.
// - Parameters on disk (offload_param nvme): each layer's piece is first read from the
//   rank's NvmeParamStore into one of its buffer_count buffers, ahead along the recorded
//   order; the all-gather starts once the read is done. On one rank the read buffer is the
//   gathered layer. Every decision counts buffers the same way on every rank (a piece in the
//   resident part counts too), so the ranks launch their all-gathers in the same order.
#pragma once

#include <cstdint>
#include <vector>

#include "memory/flat_buffers.h"
#include "memory/offload/nvme_param_store.h"
#include "parallel/comm/process_group.h"
#include "runtime/core/params.h"
#include "runtime/core/storage.h"

namespace tessera::memory {

struct GatherOptions {
  DType dtype = DType::F32;  // of the parameters
  int64_t prefetch_elems = 50'000'000;
  int64_t persistence_threshold = 100'000;
  int64_t max_live_elems = 1'000'000'000;
};

class Stage3Gatherer {
 public:
  // shard_params: the rank's working parameter shard (ShardLayout::shard of the flat model),
  // read by every gather; it must hold the current parameters before refresh_persistent().
  // param_store: where the shard lives instead when it is on disk (shard_params nullptr).
  // Throws InvalidArgument when a non-persistent layer is larger than max_live_elems.
  // Allocates the persistent layers but gathers nothing: call refresh_persistent() once the
  // shard is filled.
  Stage3Gatherer(const ParamRegistry& registry, parallel::ProcessGroup& group,
                 const GatherOptions& options, const void* shard_params,
                 NvmeParamStore* param_store = nullptr);
  // Waits for gathers still in flight: they write into buffers about to be freed.
  ~Stage3Gatherer();
  Stage3Gatherer(const Stage3Gatherer&) = delete;
  Stage3Gatherer& operator=(const Stage3Gatherer&) = delete;

  // The whole layer, valid until the matching release(layer).
  void* acquire(int layer);
  void release(int layer);
  // At a pass boundary (nothing acquired): drops every gathered layer. training: the pass
  // runs backward; only training passes record and follow the acquire order.
  void begin_pass(bool training);
  // After a training pass's backward: stop recording and following (the trainer's next
  // passes may be evaluation, which follows no order).
  void end_training_pass();
  // Collective. Drops every gathered layer (stale after an update) and re-gathers the
  // persistent ones from the shards.
  void refresh_persistent();

  // Non-persistent parameter elements gathered (or being gathered) now, and the most ever.
  int64_t live_elems() const { return live_elems_; }
  int64_t peak_live_elems() const { return peak_live_elems_; }
  int num_persistent_layers() const;
  int64_t persistent_bytes() const;
  bool is_persistent(int layer) const { return layers_.at(layer).persistent; }
  bool is_gathered(int layer) const { return layers_.at(layer).data != nullptr; }
  // The acquire order recorded by the first training pass.
  const std::vector<int>& recorded_order() const { return trace_; }

 private:
  struct LayerState {
    bool persistent = false;
    Storage gathered;      // the whole layer, while gathered (unless direct)
    void* data = nullptr;  // the whole layer: gathered's, or the read buffer's when direct
    parallel::WorkPtr gathering;
    // Parameters on disk: the piece's read, held from start_gather until its all-gather is
    // done (direct: until the layer is freed).
    NvmeParamStore::Fetch fetch;
    bool holds_fetch = false;
    bool reading = false;  // the read's all-gather is not launched yet
    int64_t fetch_round = 0;
    int in_use = 0;
    std::vector<size_t> counts;  // elements of the layer each rank contributes
  };

  void start_gather(int layer);
  void launch_gather(int layer);  // parameters on disk: after the read, the all-gather
  void wait_gather(int layer);
  // One rank, parameters on disk, a layer that is not persistent: the read is the gather.
  bool direct(int layer) const {
    return store_ != nullptr && group_.size() == 1 && !layers_[layer].persistent;
  }
  // Parameters on disk: completes or frees layers until a read buffer is free.
  void make_buffer_room();
  void drop_fetch(int layer);
  void free_gathered(int layer);
  void free_all_gathered();
  std::vector<int> upcoming_window() const;  // layers wanted within prefetch_elems of pos_
  void prefetch();

  const ParamRegistry& registry_;
  parallel::ProcessGroup& group_;
  GatherOptions options_;
  size_t elem_size_;
  ShardLayout layout_;
  const char* shard_params_;
  NvmeParamStore* store_;
  int fetches_held_ = 0;
  int64_t prefetch_round_ = 0;

  std::vector<LayerState> layers_;
  std::vector<int> trace_;  // layer acquire order of a training pass
  bool recording_ = false;
  bool following_ = false;  // this pass still matches trace_
  size_t pos_ = 0;          // next trace_ entry
  int64_t live_elems_ = 0;
  int64_t peak_live_elems_ = 0;
};

}  // namespace tessera::memory
