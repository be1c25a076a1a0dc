#include "memory/zero/stage3_gatherer.h"

#include <algorithm>

#include "memory/precision.h"
#include "runtime/core/error.h"

namespace tessera::memory {

Stage3Gatherer::Stage3Gatherer(const ParamRegistry& registry, parallel::ProcessGroup& group,
                               const GatherOptions& options, const void* shard_params,
                               NvmeParamStore* param_store)
    : registry_(registry),
      group_(group),
      options_(options),
      elem_size_(dtype_size(options.dtype)),
      layout_(registry.numel(), group.rank(), group.size()),
      shard_params_(static_cast<const char*>(shard_params)),
      store_(param_store) {
  check_working_dtype(options.dtype);
  const int L = registry.num_layers();
  layers_.resize(L);
  for (int l = 0; l < L; ++l) {
    LayerState& s = layers_[l];
    const LayerRange& r = registry.layer(l);
    s.counts = layout_.counts(r.begin, r.end);
    s.persistent = r.numel() <= options.persistence_threshold;
    if (s.persistent) {
      // No zero fill: refresh_persistent's gather writes every element.
      s.gathered = Storage(r.numel() * elem_size_, MemCategory::Params, Device::cpu(), false);
      s.data = s.gathered.data();
    } else {
      TS_CHECK(r.numel() <= options.max_live_elems,
               "zero_optimization.stage3_max_live_parameters ({}) is below layer {}'s {} "
               "parameters, which must be gathered whole: raise it to at least {}",
               options.max_live_elems, l, r.numel(), r.numel());
    }
  }
}

Stage3Gatherer::~Stage3Gatherer() {
  // After a failure the group is aborted and these waits return at once with the error,
  // which is already being reported.
  for (LayerState& s : layers_) {
    if (s.gathering) {
      try {
        s.gathering->wait();
      } catch (...) {
      }
    }
    if (s.holds_fetch) store_->release(s.fetch);  // waits for the read into the buffer
  }
}

void* Stage3Gatherer::acquire(int layer) {
  const LayerRange& r = registry_.layer(layer);
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
    if (s.data == nullptr) {
      // Make room under the live limit by dropping prefetched layers nobody uses yet.
      for (int l = 0; l < static_cast<int>(layers_.size()) &&
                      live_elems_ + r.numel() > options_.max_live_elems;
           ++l) {
        if (!layers_[l].persistent && layers_[l].in_use == 0 && layers_[l].data != nullptr) {
          free_gathered(l);
        }
      }
      make_buffer_room();
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
  return s.data;
}

void Stage3Gatherer::release(int layer) {
  LayerState& s = layers_.at(layer);
  TS_CHECK(s.in_use > 0, "release({}) without a matching acquire", layer);
  if (--s.in_use > 0 || s.persistent) return;
  // Used again soon (the tied embedding between forward's end and backward's start): keep.
  const std::vector<int> soon = upcoming_window();
  if (std::find(soon.begin(), soon.end(), layer) != soon.end()) return;
  free_gathered(layer);
}

void Stage3Gatherer::start_gather(int layer) {
  LayerState& s = layers_[layer];
  const LayerRange& r = registry_.layer(layer);
  if (s.data == nullptr) {
    if (!direct(layer)) {
      // No zero fill: the gather writes every element.
      s.gathered = Storage(r.numel() * elem_size_, MemCategory::Params, Device::cpu(), false);
      s.data = s.gathered.data();
    }
    live_elems_ += r.numel();
    peak_live_elems_ = std::max(peak_live_elems_, live_elems_);
  }
  const ShardRange mine = layout_.piece(r.begin, r.end);
  const int64_t at = mine.numel() > 0 ? mine.begin - layout_.shard.begin : 0;
  if (store_ != nullptr) {
    s.fetch = store_->fetch(at, at + mine.numel());
    s.holds_fetch = true;
    ++fetches_held_;
    s.fetch_round = prefetch_round_;
    if (direct(layer)) {
      // The model only reads its parameters.
      s.data = const_cast<char*>(s.fetch.data);
    } else {
      s.reading = true;  // launch_gather starts the all-gather once the read is done
    }
    return;
  }
  const char* send = shard_params_ + at * static_cast<int64_t>(elem_size_);
  s.gathering = group_.all_gather_v(send, s.data, s.counts, options_.dtype);
}

void Stage3Gatherer::launch_gather(int layer) {
  LayerState& s = layers_[layer];
  if (!s.reading) return;
  s.reading = false;
  store_->wait(s.fetch);
  s.gathering = group_.all_gather_v(s.fetch.data, s.data, s.counts, options_.dtype);
}

void Stage3Gatherer::drop_fetch(int layer) {
  LayerState& s = layers_[layer];
  if (!s.holds_fetch) return;
  s.holds_fetch = false;
  --fetches_held_;
  store_->release(s.fetch);
}

void Stage3Gatherer::wait_gather(int layer) {
  LayerState& s = layers_[layer];
  if (direct(layer)) {
    if (s.holds_fetch) store_->wait(s.fetch);  // the buffer is the layer: keep it
    return;
  }
  launch_gather(layer);
  if (s.gathering) {
    parallel::WorkPtr w = std::move(s.gathering);
    s.gathering.reset();
    w->wait();
  }
  drop_fetch(layer);
}

void Stage3Gatherer::make_buffer_room() {
  if (store_ == nullptr) return;
  // Oldest first: finish reads whose all-gather only waits to be launched, then drop
  // prefetched direct layers nobody uses yet.
  for (int l = 0; l < static_cast<int>(layers_.size()) && fetches_held_ >= store_->buffer_count();
       ++l) {
    if (layers_[l].holds_fetch && !direct(l)) wait_gather(l);
  }
  for (int l = 0; l < static_cast<int>(layers_.size()) && fetches_held_ >= store_->buffer_count();
       ++l) {
    if (layers_[l].holds_fetch && layers_[l].in_use == 0) free_gathered(l);
  }
  TS_CHECK(fetches_held_ < store_->buffer_count(),
           "offload_param: all {} parameter buffers hold layers in use: raise "
           "zero_optimization.offload_param.buffer_count",
           store_->buffer_count());
}

void Stage3Gatherer::free_gathered(int layer) {
  LayerState& s = layers_[layer];
  wait_gather(layer);
  if (s.data == nullptr || s.persistent) return;
  live_elems_ -= registry_.layer(layer).numel();
  drop_fetch(layer);  // direct: the buffer was the layer
  s.gathered = Storage();
  s.data = nullptr;
}

void Stage3Gatherer::free_all_gathered() {
  for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
    TS_CHECK(layers_[l].in_use == 0, "layer {} still acquired at a pass boundary", l);
    free_gathered(l);
  }
}

std::vector<int> Stage3Gatherer::upcoming_window() const {
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

void Stage3Gatherer::prefetch() {
  const std::vector<int> window = upcoming_window();
  ++prefetch_round_;
  // Reads started by an earlier call have had a layer's compute to land: gather them now.
  for (int l : window) {
    if (layers_[l].reading && layers_[l].fetch_round < prefetch_round_ - 1) launch_gather(l);
  }
  for (int l : window) {
    LayerState& s = layers_[l];
    if (s.data != nullptr) continue;
    // Prefetching never evicts: it only uses room the live limit (and the read buffers) leave.
    if (live_elems_ + registry_.layer(l).numel() > options_.max_live_elems) break;
    if (store_ != nullptr && fetches_held_ >= store_->buffer_count()) break;
    start_gather(l);
  }
}

void Stage3Gatherer::begin_pass(bool training) {
  free_all_gathered();
  pos_ = 0;
  recording_ = training && trace_.empty();
  // Forward-only passes gather on demand: the recorded order runs on into backward, and
  // prefetching along it would gather layers such a pass never uses.
  following_ = training && !recording_;
}

void Stage3Gatherer::end_training_pass() {
  recording_ = false;
  following_ = false;
}

void Stage3Gatherer::refresh_persistent() {
  free_all_gathered();  // stale now
  std::vector<int> refreshing;
  for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
    if (!layers_[l].persistent) continue;
    // From disk one at a time: each read takes a buffer until its all-gather is done.
    if (store_ != nullptr) make_buffer_room();
    start_gather(l);
    refreshing.push_back(l);
  }
  for (int l : refreshing) wait_gather(l);
}

int Stage3Gatherer::num_persistent_layers() const {
  return static_cast<int>(std::count_if(layers_.begin(), layers_.end(),
                                        [](const LayerState& s) { return s.persistent; }));
}

int64_t Stage3Gatherer::persistent_bytes() const {
  int64_t bytes = 0;
  for (const LayerState& s : layers_) {
    if (s.persistent) bytes += static_cast<int64_t>(s.gathered.bytes());
  }
  return bytes;
}

}  // namespace tessera::memory
