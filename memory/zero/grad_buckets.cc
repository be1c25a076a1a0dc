#include "memory/zero/grad_buckets.h"

#include <algorithm>
#include <cstring>

#include "memory/precision.h"
#include "memory/zero/zero_plan.h"
#include "runtime/core/error.h"

namespace tessera::memory {

GradBuckets::GradBuckets(const ParamRegistry& registry, parallel::ProcessGroup& group,
                         const GradBucketOptions& options, void* full_grads, void* shard_grads)
    : registry_(registry),
      group_(group),
      options_(options),
      elem_size_(dtype_size(options.dtype)),
      layout_(registry.numel(), group.rank(), group.size()),
      full_grads_(static_cast<char*>(full_grads)),
      shard_grads_(static_cast<char*>(shard_grads)) {
  check_working_dtype(options.dtype);
  TS_CHECK(!options.slots || options.reduction == GradReduction::ReduceScatter,
           "gradient bucket slots hold a shard's gradients: they need a reduce-scatter");
  TS_CHECK(options.slots ? shard_grads != nullptr : full_grads != nullptr,
           "gradient buckets: no gradient buffer to {}",
           options.slots ? "accumulate the shard into" : "reduce in place");
  bucket_of_layer_.assign(registry.num_layers(), -1);
  reported_.assign(registry.num_layers(), 0);
  const std::vector<BucketPlan> plans = plan_buckets(registry, options.bucket_elems);
  for (const BucketPlan& plan : plans) {
    Bucket b;
    b.begin = plan.begin;
    b.end = plan.end;
    b.layers = b.pending = plan.layers;
    b.rounds = plan.grad_reports;
    if (options.reduction == GradReduction::ReduceScatter) {
      b.counts = layout_.counts(b.begin, b.end);
    }
    for (int l = plan.first_layer; l < plan.first_layer + plan.layers; ++l) {
      bucket_of_layer_[l] = static_cast<int>(buckets_.size());
    }
    buckets_.push_back(std::move(b));
  }
  if (options.slots) {
    // Slot 0 belongs to layer 0's bucket; the shared ones start out free.
    const std::vector<int64_t> slot_elems = plan_grad_slots(plans, options.overlap_comm);
    own_first_slot_ = first_bucket_has_own_slot(plans);
    for (int64_t n : slot_elems) slots_.emplace_back(n * elem_size_, MemCategory::Grads);
    for (int i = static_cast<int>(slot_elems.size()) - 1; i >= (own_first_slot_ ? 1 : 0); --i) {
      free_slots_.push_back(i);
    }
  }
}

GradBuckets::~GradBuckets() {
  // After a failure the group is aborted and these waits return at once with the error,
  // which is already being reported.
  for (InFlight& f : in_flight_) {
    try {
      f.work->wait();
    } catch (...) {
    }
  }
}

int64_t GradBuckets::slot_bytes() const {
  int64_t bytes = 0;
  for (const Storage& s : slots_) bytes += static_cast<int64_t>(s.bytes());
  return bytes;
}

void* GradBuckets::grads(int layer) {
  const LayerRange& r = registry_.layer(layer);
  if (!options_.slots) return elem(full_grads_, r.begin);
  const int b = bucket_of(layer);
  return bucket_grads(b) + (r.begin - buckets_[b].begin) * static_cast<int64_t>(elem_size_);
}

char* GradBuckets::bucket_grads(int b) {
  Bucket& bucket = buckets_[b];
  // A bucket reduced again in this pass: its previous round must land before refilling.
  while (bucket.in_flight) complete_oldest();
  if (bucket.slot < 0 && own_first_slot_ && b == bucket_of_layer_[0]) {
    bucket.slot = 0;  // its own slot, free again by the next pass (the owner drains first)
    std::memset(slots_[0].data(), 0, (bucket.end - bucket.begin) * elem_size_);
  } else if (bucket.slot < 0) {
    while (free_slots_.empty()) {
      TS_CHECK(!in_flight_.empty(), "no free gradient bucket slot and no reduction to wait for");
      complete_oldest();
    }
    bucket.slot = free_slots_.back();
    free_slots_.pop_back();
    // Backward kernels accumulate (+=) into their gradients.
    std::memset(slots_[bucket.slot].data(), 0, (bucket.end - bucket.begin) * elem_size_);
  }
  return static_cast<char*>(slots_[bucket.slot].data());
}

int GradBuckets::bucket_of(int layer) const {
  const int b = bucket_of_layer_.at(layer);
  TS_CHECK(b >= 0, "layer {} holds no parameters on this rank (another pipeline stage's)", layer);
  return b;
}

void GradBuckets::ready(int layer) {
  const int b = bucket_of(layer);
  Bucket& bucket = buckets_[b];
  // Per layer, not per bucket: a layer reported too often must not stand in for a sibling.
  TS_CHECK(reported_[layer] < bucket.rounds,
           "grads_ready({}) called {} times in one backward pass, expected {}", layer,
           reported_[layer] + 1, bucket.rounds);
  TS_CHECK(reported_[layer] == bucket.round,
           "grads_ready({}) reported again before its bucket's other layers", layer);
  ++reported_[layer];
  if (--bucket.pending > 0) return;
  ++bucket.round;
  if (bucket.round < bucket.rounds) {
    bucket.pending = bucket.layers;
    // In place, the rounds add into the same gradients: one reduction, after the last.
    if (!options_.slots) return;
  }
  if (options_.reduction == GradReduction::AllReduce) {
    parallel::AllreduceOptions opts;
    opts.op = parallel::ReduceOp::Avg;
    in_flight_.push_back({b, group_.all_reduce(elem(full_grads_, bucket.begin),
                                               static_cast<size_t>(bucket.end - bucket.begin),
                                               options_.dtype, opts)});
  } else {
    const ShardRange mine = layout_.piece(bucket.begin, bucket.end);
    char* send = options_.slots ? bucket_grads(b) : elem(full_grads_, bucket.begin);
    // Rank r's block of the bucket is its shard's piece, in rank order: receive in place.
    char* recv = send + (mine.numel() > 0 ? mine.begin - bucket.begin : 0) *
                            static_cast<int64_t>(elem_size_);
    parallel::ReduceScatterOptions opts;
    opts.op = parallel::ReduceOp::Avg;
    in_flight_.push_back(
        {b, group_.reduce_scatter_v(send, recv, bucket.counts, options_.dtype, opts)});
  }
  bucket.in_flight = true;
  if (!options_.overlap_comm) complete_oldest();
}

void GradBuckets::complete_oldest() {
  InFlight f = std::move(in_flight_.front());
  in_flight_.erase(in_flight_.begin());
  f.work->wait();
  Bucket& bucket = buckets_[f.bucket];
  bucket.in_flight = false;
  ++bucket.reduced;
  const ShardRange mine = layout_.piece(bucket.begin, bucket.end);
  // In place the rounds add up before one reduction; with slots each round is reduced.
  const bool last = bucket.reduced == (options_.slots ? bucket.rounds : 1);
  if (!options_.slots) {  // reduced in place
    if (last && on_reduced_ && mine.numel() > 0) on_reduced_(mine.begin, mine.end);
    return;
  }
  const char* piece = static_cast<const char*>(slots_[bucket.slot].data()) +
                      (mine.begin - bucket.begin) * static_cast<int64_t>(elem_size_);
  char* acc = elem(shard_grads_, mine.begin - layout_.shard.begin);
  // Micro-batches accumulate in the shard: the sum of averages is the average of sums.
  accumulate_working(options_.dtype, acc, piece, mine.numel());
  if (bucket.slot != 0 || !own_first_slot_) free_slots_.push_back(bucket.slot);
  bucket.slot = -1;
  if (last && on_reduced_ && mine.numel() > 0) on_reduced_(mine.begin, mine.end);
}

void GradBuckets::drain(bool complete_pass) {
  while (!in_flight_.empty()) complete_oldest();
  for (Bucket& b : buckets_) {
    const bool done = b.round == b.rounds && b.pending == 0;
    const bool untouched = b.round == 0 && b.pending == b.layers;
    TS_CHECK(done || (!complete_pass && untouched),
             "a backward pass left {} of {} layer(s) of a gradient bucket unreported (round {} "
             "of {})",
             b.pending, b.layers, b.round + 1, b.rounds);
    b.pending = b.layers;
    b.round = 0;
    b.reduced = 0;
  }
  std::fill(reported_.begin(), reported_.end(), 0);
}

}  // namespace tessera::memory
