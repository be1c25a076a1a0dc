#include "memory/zero/sharded_access.h"

#include <algorithm>
#include <cstring>

#include "memory/precision.h"
#include "runtime/core/error.h"

namespace tessera::memory {


ShardedParamAccess::ShardedParamAccess(const ParamRegistry& registry,
                                       parallel::ProcessGroup& dp_group,
                                       const ZeroOptions& options, const float* initial)
    : registry_(registry),
      group_(dp_group),
      options_(options),
      elem_size_(dtype_size(options.dtype)),
      rank_(dp_group.rank()),
      world_(dp_group.size()),
      numel_(registry.numel()),
      padded_(padded_numel(registry.numel(), dp_group.size())),
      shard_(shard_range(registry.numel(), dp_group.rank(), dp_group.size())) {
  TS_CHECK(options.stage >= 1 && options.stage <= 3, "ShardedParamAccess runs ZeRO stages 1-3, "
           "not {}", options.stage);
  check_working_dtype(options.dtype);
  const int64_t S = shard_.numel();
  const ShardRange owned = owned_piece(0, numel_);
  if (options.stage <= 2) {
    // Full parameters with the padding at the end, so the updated shards all-gather in place.
    params_ = Storage(padded_ * elem_size_, MemCategory::Params);
    store_working(options.dtype, initial, params_.data(), numel_);
  } else {
    params_ = Storage(S * elem_size_, MemCategory::Params);
    store_working(options.dtype, initial + owned.begin, params_.data(), owned.numel());
  }
  grads_ = Storage((options.stage == 1 ? padded_ : S) * elem_size_, MemCategory::Grads);
  if (is_16bit(options.dtype)) {
    master_ = Storage(S * sizeof(float), MemCategory::Optimizer);
    if (owned.numel() > 0) {
      std::memcpy(master_.data(), initial + owned.begin, owned.numel() * sizeof(float));
    }
  }
  exp_avg_ = Storage(S * sizeof(float), MemCategory::Optimizer);
  exp_avg_sq_ = Storage(S * sizeof(float), MemCategory::Optimizer);

  // Buckets: runs of consecutive layers in backward order up to reduce_bucket_elems.
  const int L = registry.num_layers();
  bucket_of_layer_.assign(L, -1);
  const std::vector<BucketPlan> plans = plan_buckets(registry, options.reduce_bucket_elems);
  for (const BucketPlan& plan : plans) {
    Bucket b;
    b.begin = plan.begin;
    b.end = plan.end;
    b.layers = b.pending = plan.layers;
    b.counts = piece_counts(b.begin, b.end);
    for (int l = plan.first_layer; l < plan.first_layer + plan.layers; ++l) {
      bucket_of_layer_[l] = static_cast<int>(buckets_.size());
    }
    buckets_.push_back(std::move(b));
  }
  if (options.stage >= 2) {
    // Slot 0 belongs to layer 0's bucket; the shared ones start out free.
    const std::vector<int64_t> slot_elems = plan_grad_slots(plans, options.overlap_comm);
    for (int64_t n : slot_elems) slots_.emplace_back(n * elem_size_, MemCategory::Grads);
    for (int i = static_cast<int>(slot_elems.size()) - 1; i >= 1; --i) free_slots_.push_back(i);
  }

  layers_.resize(L);
  for (int l = 0; l < L; ++l) {
    LayerState& s = layers_[l];
    const LayerRange& r = registry.layer(l);
    s.counts = piece_counts(r.begin, r.end);
    if (options.stage < 3) continue;
    s.persistent = r.numel() <= options.persistence_threshold;
    if (s.persistent) {
      s.gathered = Storage(r.numel() * elem_size_, MemCategory::Params, Device::cpu(), false);
      store_working(options.dtype, initial + r.begin, s.gathered.data(), r.numel());
    } else {
      TS_CHECK(r.numel() <= options.max_live_elems,
               "zero_optimization.stage3_max_live_parameters ({}) is below layer {}'s {} "
               "parameters, which must be gathered whole: raise it to at least {}",
               options.max_live_elems, l, r.numel(), r.numel());
    }
  }
}

ShardedParamAccess::~ShardedParamAccess() {
  // Collectives may still write into buffers about to be freed; after a failure the group is
  // aborted and these waits return at once with the error, which is already being reported.
  for (InFlight& f : in_flight_) {
    try {
      f.work->wait();
    } catch (...) {
    }
  }
  for (LayerState& s : layers_) {
    if (!s.gathering) continue;
    try {
      s.gathering->wait();
    } catch (...) {
    }
  }
}

ShardRange ShardedParamAccess::owned_piece(int64_t begin, int64_t end) const {
  return intersect({begin, end}, intersect(shard_, {0, numel_}));
}

std::vector<size_t> ShardedParamAccess::piece_counts(int64_t begin, int64_t end) const {
  std::vector<size_t> counts(world_);
  for (int r = 0; r < world_; ++r) {
    const ShardRange s = shard_range(numel_, r, world_);
    counts[r] = static_cast<size_t>(intersect({begin, end}, s).numel());
  }
  return counts;
}

char* ShardedParamAccess::param_shard_ptr() const {
  return at(params_, options_.stage <= 2 ? shard_.begin : 0);
}

char* ShardedParamAccess::grad_shard_ptr() const {
  return at(grads_, options_.stage == 1 ? shard_.begin : 0);
}

// --- parameters ---------------------------------------------------------------------------

void* ShardedParamAccess::acquire(int layer) {
  const LayerRange& r = registry_.layer(layer);
  if (options_.stage <= 2) return at(params_, r.begin);
  // Follow (or, on the first training pass, record) the order layers are used in.
  if (recording_) {
    trace_.push_back(layer);
    pos_ = trace_.size();
  } else if (following_ && pos_ < trace_.size() && trace_[pos_] == layer) {
    ++pos_;
  } else {
    following_ = false;  // an order never seen: gather on demand, no prefetch
  }
  LayerState& s = layers_.at(layer);
  if (!s.persistent) {
    if (s.gathered.data() == nullptr) {
      // Make room under the live limit by dropping prefetched layers nobody uses yet.
      for (int l = 0; l < static_cast<int>(layers_.size()) &&
                      live_elems_ + r.numel() > options_.max_live_elems;
           ++l) {
        if (!layers_[l].persistent && layers_[l].in_use == 0 && layers_[l].gathered.data()) {
          free_gathered(l);
        }
      }
      TS_CHECK(live_elems_ + r.numel() <= options_.max_live_elems,
               "stage 3: gathering layer {} ({} parameters) would hold {} live parameters, over "
               "stage3_max_live_parameters {}: raise it",
               layer, r.numel(), live_elems_ + r.numel(), options_.max_live_elems);
      start_gather(layer);
    }
    wait_gather(layer);
  }
  ++s.in_use;
  prefetch();
  return s.gathered.data();
}

void ShardedParamAccess::release(int layer) {
  if (options_.stage <= 2) return;
  LayerState& s = layers_.at(layer);
  TS_CHECK(s.in_use > 0, "release({}) without a matching acquire", layer);
  if (--s.in_use > 0 || s.persistent) return;
  // Used again soon (the tied embedding between forward's end and backward's start): keep.
  const std::vector<int> soon = upcoming_window();
  if (std::find(soon.begin(), soon.end(), layer) != soon.end()) return;
  free_gathered(layer);
}

void ShardedParamAccess::start_gather(int layer) {
  LayerState& s = layers_[layer];
  const LayerRange& r = registry_.layer(layer);
  if (s.gathered.data() == nullptr) {
    // No zero fill: the gather writes every element.
    s.gathered = Storage(r.numel() * elem_size_, MemCategory::Params, Device::cpu(), false);
    live_elems_ += r.numel();
    peak_live_elems_ = std::max(peak_live_elems_, live_elems_);
  }
  const ShardRange mine = owned_piece(r.begin, r.end);
  const char* send = at(params_, mine.numel() > 0 ? mine.begin - shard_.begin : 0);
  s.gathering = group_.all_gather_v(send, s.gathered.data(), s.counts, options_.dtype);
}

void ShardedParamAccess::wait_gather(int layer) {
  LayerState& s = layers_[layer];
  if (!s.gathering) return;
  parallel::WorkPtr w = std::move(s.gathering);
  s.gathering.reset();
  w->wait();
}

void ShardedParamAccess::free_gathered(int layer) {
  LayerState& s = layers_[layer];
  wait_gather(layer);
  if (s.gathered.data() == nullptr || s.persistent) return;
  live_elems_ -= registry_.layer(layer).numel();
  s.gathered = Storage();
}

void ShardedParamAccess::free_all_gathered() {
  for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
    TS_CHECK(layers_[l].in_use == 0, "layer {} still acquired at a pass boundary", l);
    free_gathered(l);
  }
}

std::vector<int> ShardedParamAccess::upcoming_window() const {
  std::vector<int> out;
  if (!following_) return out;
  int64_t budget = 0;
  for (size_t k = pos_; k < trace_.size(); ++k) {
    const int l = trace_[k];
    if (layers_[l].persistent || std::find(out.begin(), out.end(), l) != out.end()) continue;
    const int64_t n = registry_.layer(l).numel();
    if (budget + n > options_.prefetch_elems) break;
    budget += n;
    out.push_back(l);
  }
  return out;
}

void ShardedParamAccess::prefetch() {
  for (int l : upcoming_window()) {
    LayerState& s = layers_[l];
    if (s.gathered.data() != nullptr) continue;
    // Prefetching never evicts: it only uses room the live limit leaves.
    if (live_elems_ + registry_.layer(l).numel() > options_.max_live_elems) break;
    start_gather(l);
  }
}

int ShardedParamAccess::num_persistent_layers() const {
  return static_cast<int>(std::count_if(layers_.begin(), layers_.end(),
                                        [](const LayerState& s) { return s.persistent; }));
}

// --- gradients ----------------------------------------------------------------------------

void* ShardedParamAccess::grads(int layer) {
  const LayerRange& r = registry_.layer(layer);
  if (options_.stage == 1) return at(grads_, r.begin);
  const int b = bucket_of_layer_.at(layer);
  return bucket_grads(b) + (r.begin - buckets_[b].begin) * static_cast<int64_t>(elem_size_);
}

char* ShardedParamAccess::bucket_grads(int b) {
  Bucket& bucket = buckets_[b];
  if (bucket.slot < 0 && b == bucket_of_layer_[0]) {
    bucket.slot = 0;  // its own slot, free again by the next pass (begin_micro_batch drains)
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
  return at(slots_[bucket.slot], 0);
}

void ShardedParamAccess::grads_ready(int layer) {
  if (options_.stage == 1 && !sync_) return;  // stage 1 accumulates full gradients locally
  const int b = bucket_of_layer_.at(layer);
  Bucket& bucket = buckets_[b];
  TS_CHECK(bucket.pending > 0, "grads_ready({}) called twice in one backward pass", layer);
  if (--bucket.pending > 0) return;
  const ShardRange mine = owned_piece(bucket.begin, bucket.end);
  char* send = options_.stage == 1 ? at(grads_, bucket.begin) : bucket_grads(b);
  // Rank r's block of the bucket is its shard's piece, in rank order: receive in place.
  char* recv = send + (mine.numel() > 0 ? mine.begin - bucket.begin : 0) *
                          static_cast<int64_t>(elem_size_);
  parallel::ReduceScatterOptions opts;
  opts.op = parallel::ReduceOp::Avg;
  in_flight_.push_back(
      {b, group_.reduce_scatter_v(send, recv, bucket.counts, options_.dtype, opts)});
  if (!options_.overlap_comm) complete_oldest();
}

void ShardedParamAccess::complete_oldest() {
  InFlight f = std::move(in_flight_.front());
  in_flight_.erase(in_flight_.begin());
  complete(f);
}

void ShardedParamAccess::complete(const InFlight& f) {
  f.work->wait();
  if (options_.stage == 1) return;  // reduced in place into the owned shard
  Bucket& bucket = buckets_[f.bucket];
  const ShardRange mine = owned_piece(bucket.begin, bucket.end);
  const char* piece = at(slots_[bucket.slot], mine.begin - bucket.begin);
  char* acc = grad_shard_ptr() + (mine.begin - shard_.begin) * static_cast<int64_t>(elem_size_);
  // Micro-batches accumulate in the shard: the sum of averages is the average of sums.
  accumulate_working(options_.dtype, acc, piece, mine.numel());
  if (bucket.slot != 0) free_slots_.push_back(bucket.slot);
  bucket.slot = -1;
}

// --- step boundaries ----------------------------------------------------------------------

void ShardedParamAccess::begin_micro_batch(bool training, bool sync) {
  // A bucket's slot is reused by the next pass: its previous reduction must have landed.
  drain();
  sync_ = sync;
  if (options_.stage < 3) return;
  free_all_gathered();
  pos_ = 0;
  recording_ = training && trace_.empty();
  // Forward-only passes gather on demand: the recorded order runs on into backward, and
  // prefetching along it would gather layers such a pass never uses.
  following_ = training && !recording_;
}

void ShardedParamAccess::drain() {
  while (!in_flight_.empty()) complete_oldest();
  for (Bucket& b : buckets_) {
    // All of a bucket's layers report in a backward pass, or none (forward-only passes and
    // stage 1's accumulating micro-batches).
    TS_CHECK(b.pending == 0 || b.pending == b.layers,
             "a backward pass left {} of {} layer(s) of a gradient bucket unreported", b.pending,
             b.layers);
    b.pending = b.layers;
  }
}

void ShardedParamAccess::finish_gradients() {
  drain();
  if (options_.stage == 3) {
    recording_ = false;
    following_ = false;
  }
}

void ShardedParamAccess::zero_grads() { grads_.zero(); }

OptimizerShard ShardedParamAccess::shard() {
  OptimizerShard s;
  s.range = owned_piece(0, numel_);
  s.dtype = options_.dtype;
  s.params = param_shard_ptr();
  s.grads = grad_shard_ptr();
  s.master = is_16bit(options_.dtype) ? static_cast<float*>(master_.data())
                                      : reinterpret_cast<float*>(param_shard_ptr());
  s.exp_avg = static_cast<float*>(exp_avg_.data());
  s.exp_avg_sq = static_cast<float*>(exp_avg_sq_.data());
  return s;
}

void ShardedParamAccess::after_update() {
  if (options_.stage <= 2) {
    group_.all_gather(at(params_, shard_.begin), params_.data(),
                      static_cast<size_t>(shard_.numel()), options_.dtype)
        ->wait();
    return;
  }
  free_all_gathered();  // stale now
  std::vector<int> refreshing;
  for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
    if (!layers_[l].persistent) continue;
    start_gather(l);
    refreshing.push_back(l);
  }
  for (int l : refreshing) wait_gather(l);
}

void ShardedParamAccess::gather_full(float* out) {
  const bool from_master = is_16bit(options_.dtype);
  if (!from_master && options_.stage <= 2) {
    std::memcpy(out, params_.data(), numel_ * sizeof(float));
    return;
  }
  // The fp32 shards every rank holds: the master weights, or the stage-3 parameters.
  const void* mine = from_master ? master_.data() : params_.data();
  Storage full(padded_ * sizeof(float), MemCategory::Other, Device::cpu(), false);
  group_.all_gather(mine, full.data(), static_cast<size_t>(shard_.numel()), DType::F32)->wait();
  std::memcpy(out, full.data(), numel_ * sizeof(float));
}

ZeroFixedBuffers ShardedParamAccess::fixed_buffers() const {
  ZeroFixedBuffers f;
  for (const Storage& s : slots_) f.grad_bucket_bytes += static_cast<int64_t>(s.bytes());
  for (const LayerState& s : layers_) {
    if (s.persistent) f.persistent_param_bytes += static_cast<int64_t>(s.gathered.bytes());
  }
  const int64_t pad = (padded_ - numel_) * static_cast<int64_t>(elem_size_);
  if (options_.stage <= 2) f.padding_param_bytes = pad;
  if (options_.stage == 1) f.padding_grad_bytes = pad;
  return f;
}

}  // namespace tessera::memory
