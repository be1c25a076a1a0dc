// Gradient buckets: how data-parallel ranks reduce gradients while backward still runs, for
// every ZeRO stage (0: all-reduce, 1-3: reduce-scatter), so the bucket logic exists once.
//
// The plan (zero_plan.h) groups layers in backward order (last layer first) into runs of
// consecutive layers up to `bucket_elems`; layers are contiguous in the flat model, so a
// bucket is one contiguous range and one collective. Each bucket counts the layers still to
// report; the report of its last layer launches its collective at once (llm.c / PyTorch DDP
// overlap), and the launched ones are tracked in issue order until drained.
//
// Where the gradients live:
// - in place (stages 0-1): layers accumulate into a flat gradient buffer over the whole model,
//   and the collective runs on it in place: all-reduce (average), or reduce-scatter (average)
//   whose rank-r block is rank r's own piece of the bucket, received where it already is;
// - in slots (stages 2-3): a rank keeps only its gradient shard, so layers accumulate into a
//   scratch slot holding their bucket; when the reduce-scatter lands, the rank's piece is
//   added into the shard (micro-batches sum there) and the slot is free again. Slot 0 is the
//   bucket of layer 0's when that layer is reported once (the whole tied embedding: the head
//   writes it first and the embedding last, so it stays open all of backward); the shared
//   slots are reclaimed from the oldest reduction when none is free.
// - layers reported twice a pass (LayerRange::grad_reports: a chunked tied embedding) form
//   buckets of their own, reduced once per round of reports with slots; in place (stages 0-1:
//   a second reduction would average the first one's result again) the rounds add into the
//   same gradients and the bucket is reduced once, after the last.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "memory/flat_buffers.h"
#include "parallel/comm/process_group.h"
#include "runtime/core/params.h"
#include "runtime/core/storage.h"

namespace tessera::memory {

enum class GradReduction { AllReduce, ReduceScatter };

struct GradBucketOptions {
  DType dtype = DType::F32;  // of the gradients, and of the collectives
  int64_t bucket_elems = 25'000'000;
  GradReduction reduction = GradReduction::AllReduce;
  // Stages 2-3: gradients wait in scratch slots (reduce-scatter only).
  bool slots = false;
  // Off: each reduction is waited for as soon as it is launched.
  bool overlap_comm = true;
};

class GradBuckets {
 public:
  // full_grads (in place): at least registry.numel() gradients in options.dtype, laid out as
  // the flat model. shard_grads (slots): the rank's gradient shard, ShardLayout::shard of the
  // flat model (padding included). The other pointer is unused and may be null.
  GradBuckets(const ParamRegistry& registry, parallel::ProcessGroup& group,
              const GradBucketOptions& options, void* full_grads, void* shard_grads);
  // Waits for the reductions still in flight: they may write into buffers about to be freed.
  ~GradBuckets();
  GradBuckets(const GradBuckets&) = delete;
  GradBuckets& operator=(const GradBuckets&) = delete;

  // Where the layer's backward accumulates its gradients. With slots this may first wait for
  // the oldest reduction to free one, and zeroes the slot the first time a pass asks.
  void* grads(int layer);
  // The layer's gradients are complete for this pass; launches its bucket's collective when
  // it was the bucket's last layer.
  void ready(int layer);
  // Waits for every launched reduction (rethrowing a communication failure) and readies the
  // buckets for the next pass. complete_pass: every bucket must have launched (a
  // synchronising backward pass); otherwise each bucket's layers must all have reported or
  // none (forward-only passes and passes that accumulate without reducing).
  void drain(bool complete_pass);

  int num_buckets() const { return static_cast<int>(buckets_.size()); }
  int bucket_of_layer(int layer) const { return bucket_of_layer_.at(layer); }
  ShardRange bucket_range(int b) const { return {buckets_.at(b).begin, buckets_.at(b).end}; }
  int reductions_in_flight() const { return static_cast<int>(in_flight_.size()); }
  // Called with this rank's piece [begin, end) of the flat model (its own elements of a
  // bucket, nothing when it has none) each time a bucket's last reduction of a pass has
  // landed and, with slots, been added into the shard: from then on the pass leaves those
  // gradients alone (ZeRO-Offload copies them to the host there).
  using ReducedFn = std::function<void(int64_t begin, int64_t end)>;
  void on_reduced(ReducedFn fn) { on_reduced_ = std::move(fn); }
  int num_slots() const { return static_cast<int>(slots_.size()); }
  // Bytes of the scratch slots (zero in place).
  int64_t slot_bytes() const;

 private:
  struct Bucket {
    int64_t begin = 0, end = 0;
    int layers = 0;
    int pending = 0;  // layers not ready yet in this round
    int rounds = 1;   // reductions per pass (its layers' grad_reports)
    int round = 0;    // rounds launched in this pass
    bool in_flight = false;
    int reduced = 0;             // reductions landed in this pass
    int slot = -1;               // slots: the scratch slot holding its gradients
    std::vector<size_t> counts;  // reduce-scatter: elements of the bucket each rank receives
  };
  struct InFlight {
    int bucket = 0;
    parallel::WorkPtr work;
  };

  char* elem(char* base, int64_t i) const { return base + i * static_cast<int64_t>(elem_size_); }
  char* bucket_grads(int b);
  int bucket_of(int layer) const;
  void complete_oldest();

  const ParamRegistry& registry_;
  parallel::ProcessGroup& group_;
  GradBucketOptions options_;
  size_t elem_size_;
  ShardLayout layout_;
  char* full_grads_;
  char* shard_grads_;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_layer_;
  std::vector<int> reported_;    // per layer, reports this pass
  bool own_first_slot_ = false;  // slot 0 belongs to layer 0's bucket
  std::vector<Storage> slots_;
  std::vector<int> free_slots_;
  std::vector<InFlight> in_flight_;  // issue order
  ReducedFn on_reduced_;
};

}  // namespace tessera::memory
