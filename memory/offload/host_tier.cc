#include "memory/offload/host_tier.h"

#include <algorithm>

#include "runtime/core/error.h"

namespace tessera::memory {

HostTier::HostTier(CopyEngine& engine, int64_t numel, DType dtype, int64_t sub_group_elems,
                   const void* device_grads, void* device_params)
    : engine_(engine),
      numel_(numel),
      dtype_(dtype),
      elem_(static_cast<int64_t>(dtype_size(dtype))),
      sub_group_elems_(std::max<int64_t>(1, std::min(sub_group_elems, numel))),
      device_grads_(device_grads),
      device_params_(device_params),
      tracker_(&MemoryTracker::current()) {
  TS_CHECK(numel >= 0, "a shard of {} elements", numel);
  try {
    for (float*& s : states_) {
      s = static_cast<float*>(
          host(static_cast<size_t>(numel) * sizeof(float), MemCategory::Optimizer));
    }
    grads_ = host(static_cast<size_t>(numel * elem_), MemCategory::Grads);
    for (Staging& s : staging_) {
      s.data = host(static_cast<size_t>(sub_group_elems_ * elem_), MemCategory::Params);
    }
  } catch (...) {
    for (const Allocation& a : allocations_) {
      engine_.free_host(a.ptr, a.bytes);
      tracker_->on_free(a.category, static_cast<int64_t>(a.bytes));
    }
    throw;
  }
}

HostTier::~HostTier() {
  try {
    engine_.synchronize();
  } catch (const std::exception&) {
    // A failed copy was already reported to whoever waited for it; the buffers go anyway.
  }
  for (const Allocation& a : allocations_) {
    engine_.free_host(a.ptr, a.bytes);
    tracker_->on_free(a.category, static_cast<int64_t>(a.bytes));
  }
}

void* HostTier::host(size_t bytes, MemCategory category) {
  void* ptr = engine_.allocate_host(bytes);
  allocations_.push_back({ptr, bytes, category});
  tracker_->on_alloc(category, static_cast<int64_t>(bytes));
  return ptr;
}

int64_t HostTier::plan_pinned_bytes(int64_t numel, DType dtype, int64_t sub_group_elems) {
  const auto elem = static_cast<int64_t>(dtype_size(dtype));
  const int64_t staging = std::max<int64_t>(1, std::min(sub_group_elems, numel));
  return numel * (kNumStateKinds * static_cast<int64_t>(sizeof(float)) + elem) + 2 * staging * elem;
}

int64_t HostTier::pinned_bytes() const {
  int64_t total = 0;
  for (const Allocation& a : allocations_) total += static_cast<int64_t>(a.bytes);
  return total;
}

void HostTier::start_pass() {
  engine_.wait(last_grads_);
  reported_.clear();
  grads_taken_ = false;
  pass_ = PassStats{};
}

void HostTier::queue_grads(int64_t begin, int64_t end) {
  last_grads_ = engine_.copy_to_host(at(grads_, begin),
                                     static_cast<const char*>(device_grads_) + begin * elem_,
                                     static_cast<size_t>((end - begin) * elem_));
}

void HostTier::grads_ready(int64_t begin, int64_t end) {
  TS_CHECK(0 <= begin && begin <= end && end <= numel_, "gradients [{}, {}) of a {}-element shard",
           begin, end, numel_);
  TS_CHECK(!grads_taken_, "gradients [{}, {}) reported after the step's host copy was taken", begin,
           end);
  if (begin == end) return;
  for (const ShardRange& r : reported_) {
    // A bucket is reported once per step; a second report would copy a range twice.
    TS_CHECK(intersect(r, {begin, end}).numel() == 0,
             "gradients [{}, {}) reported twice in one step (first as [{}, {}))", begin, end,
             r.begin, r.end);
  }
  reported_.push_back({begin, end});
  queue_grads(begin, end);
  ++pass_.grad_copies;
}

void HostTier::forget_reported() {
  TS_CHECK(!grads_taken_, "forget_reported() after the step's host copy was taken");
  engine_.wait(last_grads_);
  reported_.clear();
}

const void* HostTier::host_grads() {
  if (!grads_taken_) {
    // The ranges no reduction reported (one rank, or layers without a bucket): copied now.
    std::sort(reported_.begin(), reported_.end(),
              [](const ShardRange& a, const ShardRange& b) { return a.begin < b.begin; });
    int64_t from = 0;
    for (const ShardRange& r : reported_) {
      if (r.begin > from) {
        queue_grads(from, r.begin);
        ++pass_.late_grad_copies;
      }
      from = r.end;
    }
    if (from < numel_) {
      queue_grads(from, numel_);
      ++pass_.late_grad_copies;
    }
    grads_taken_ = true;
  }
  engine_.wait(last_grads_);
  return grads_;
}

void* HostTier::write_buffer(int64_t begin, int64_t end) {
  TS_CHECK(0 <= begin && begin <= end && end <= numel_ && end - begin <= sub_group_elems_,
           "write buffer for [{}, {}) of a {}-element shard, at most {} at once", begin, end,
           numel_, sub_group_elems_);
  Staging& s = staging_[next_staging_];
  TS_CHECK(s.begin < 0, "write_buffer([{}, {})) before the previous range was committed", begin,
           end);
  engine_.wait(s.sent);  // the copy still reading this buffer
  s.begin = begin;
  s.end = end;
  return s.data;
}

void HostTier::commit(int64_t begin, int64_t end) {
  Staging& s = staging_[next_staging_];
  TS_CHECK(s.begin == begin && s.end == end, "commit([{}, {})) of a buffer handed out for [{}, {})",
           begin, end, s.begin, s.end);
  s.sent = engine_.copy_to_device(at(device_params_, begin), s.data,
                                  static_cast<size_t>((end - begin) * elem_));
  s.begin = s.end = -1;
  next_staging_ = 1 - next_staging_;
  ++pass_.param_copies;
}

void HostTier::flush() {
  for (const Staging& s : staging_) engine_.wait(s.sent);
}

}  // namespace tessera::memory
