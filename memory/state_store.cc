#include "memory/state_store.h"

#include <algorithm>
#include <cstring>

#include "runtime/core/error.h"

namespace tessera::memory {

StateStore::StateStore(int64_t numel, int64_t sub_group_elems)
    : numel_(numel), sub_group_elems_(std::max<int64_t>(1, std::min(sub_group_elems, numel))) {
  TS_CHECK(numel >= 0 && sub_group_elems >= 1,
           "optimizer states: {} elements in sub-groups of {} (zero_optimization.sub_group_size "
           "must be >= 1)",
           numel, sub_group_elems);
}

int StateStore::num_sub_groups() const {
  return static_cast<int>((numel_ + sub_group_elems_ - 1) / sub_group_elems_);
}

ShardRange StateStore::sub_group(int g) const {
  const int64_t begin = int64_t{g} * sub_group_elems_;
  return {begin, std::min(numel_, begin + sub_group_elems_)};
}

ResidentStateStore::ResidentStateStore(int64_t numel, int64_t sub_group_elems, float* master,
                                       float* exp_avg, float* exp_avg_sq)
    : StateStore(numel, sub_group_elems), arrays_{master, exp_avg, exp_avg_sq} {}

void ResidentStateStore::for_each_sub_group(const SubGroupFn& fn, SubGroupAccess /*access*/) {
  for (int g = 0; g < num_sub_groups(); ++g) {
    const ShardRange r = sub_group(g);
    fn({r, arrays_[0] + r.begin, arrays_[1] + r.begin, arrays_[2] + r.begin});
  }
}

void ResidentStateStore::read(StateKind kind, int64_t begin, int64_t end, float* out) {
  TS_CHECK(begin >= 0 && begin <= end && end <= numel(), "optimizer states: [{}, {}) of {}",
           begin, end, numel());
  if (end > begin) {
    std::memcpy(out, arrays_[static_cast<int>(kind)] + begin,
                static_cast<size_t>(end - begin) * sizeof(float));
  }
}

void ResidentStateStore::write(StateKind kind, int64_t begin, int64_t end, const float* in) {
  TS_CHECK(begin >= 0 && begin <= end && end <= numel(), "optimizer states: [{}, {}) of {}",
           begin, end, numel());
  if (end > begin) {
    std::memcpy(arrays_[static_cast<int>(kind)] + begin, in,
                static_cast<size_t>(end - begin) * sizeof(float));
  }
}

float* ResidentStateStore::resident(StateKind kind) const {
  return arrays_[static_cast<int>(kind)];
}

}  // namespace tessera::memory
