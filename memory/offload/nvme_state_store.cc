#include "memory/offload/nvme_state_store.h"

#include <algorithm>
#include <cstring>

#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/core/memory_stats.h"

namespace tessera::memory {

const char* offload_device_name(OffloadDevice device) {
  switch (device) {
    case OffloadDevice::None: return "none";
    case OffloadDevice::Cpu: return "cpu";
    case OffloadDevice::Nvme: return "nvme";
  }
  return "?";
}

NvmeStateStore::Sizes NvmeStateStore::plan(int64_t numel, int64_t sub_group_elems,
                                           bool master_resident,
                                           const OffloadOptimizerOptions& options) {
  Sizes s;
  const int64_t sub = std::max<int64_t>(1, std::min(sub_group_elems, numel));
  const int64_t groups = numel == 0 ? 0 : (numel + sub - 1) / sub;
  s.swapped_states = master_resident ? 2 : 3;
  TS_CHECK(options.buffer_count >= s.swapped_states,
           "zero_optimization.offload_optimizer.buffer_count {} holds less than one sub-group, "
           "whose {} states ({}exp_avg, exp_avg_sq) each take a buffer: set it to at least {} "
           "({} to read ahead, {} to write behind as well)",
           options.buffer_count, s.swapped_states, master_resident ? "" : "fp32 master, ",
           s.swapped_states, 2 * s.swapped_states, 3 * s.swapped_states);
  s.segment_bytes = offload::round_up_io(sub * static_cast<int64_t>(sizeof(float)));
  s.record_bytes = s.segment_bytes * s.swapped_states;
  s.slots = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(options.buffer_count / s.swapped_states, groups)));
  s.buffer_bytes = groups == 0 ? 0 : offload::io_storage_bytes(s.slots * s.record_bytes);
  s.file_bytes = std::max<int64_t>(groups, 1) * s.record_bytes;
  return s;
}

NvmeStateStore::NvmeStateStore(int64_t numel, int64_t sub_group_elems, float* resident_master,
                               const OffloadOptimizerOptions& options,
                               const offload::AioOptions& aio, const std::string& name)
    : StateStore(numel, sub_group_elems),
      master_(resident_master),
      options_(options),
      sizes_(plan(numel, sub_group_elems, resident_master != nullptr, options)),
      file_(options.nvme_path, name, sizes_.file_bytes, aio) {
  const int groups = num_sub_groups();
  if (groups > 0) {
    slots_ = sizes_.slots;
    buffer_ = offload::io_storage(slots_ * sizes_.record_bytes, MemCategory::Optimizer,
                                  /*zero=*/true);
  }
  held_.assign(static_cast<size_t>(slots_), -1);
  writing_.assign(static_cast<size_t>(slots_), std::nullopt);
  if ((options.pipeline_read || options.pipeline_write) && slots() < 2 && groups > 1) {
    log_rank0("offload: pipeline_read / pipeline_write need two sub-groups in memory, and "
              "buffer_count {} holds one ({} states each): sub-groups are read, updated and "
              "written one at a time; set buffer_count to {}",
              options.buffer_count, sizes_.swapped_states, 3 * sizes_.swapped_states);
  }
}

NvmeStateStore::~NvmeStateStore() {
  try {
    file_.wait_all();
  } catch (const Error&) {
    // Already reported by the wait that failed; the buffers are still valid until here.
  }
}

int64_t NvmeStateStore::offset(int g, StateKind kind) const {
  const int k = static_cast<int>(kind) - (master_ != nullptr ? 1 : 0);
  return int64_t{g} * sizes_.record_bytes + k * sizes_.segment_bytes;
}

char* NvmeStateStore::segment(int slot, StateKind kind) const {
  const int k = static_cast<int>(kind) - (master_ != nullptr ? 1 : 0);
  return record(slot) + k * sizes_.segment_bytes;
}

SubGroupStates NvmeStateStore::states(int g, int slot) const {
  SubGroupStates s;
  s.range = sub_group(g);
  s.master = master_ != nullptr ? master_ + s.range.begin
                                : reinterpret_cast<float*>(segment(slot, StateKind::Master));
  s.exp_avg = reinterpret_cast<float*>(segment(slot, StateKind::ExpAvg));
  s.exp_avg_sq = reinterpret_cast<float*>(segment(slot, StateKind::ExpAvgSq));
  return s;
}

void NvmeStateStore::settle_writes() {
  for (auto& w : writing_) {
    if (w) file_.wait(*std::exchange(w, std::nullopt));
  }
}

void NvmeStateStore::for_each_sub_group(const SubGroupFn& fn, SubGroupAccess access) {
  const int groups = num_sub_groups();
  const int K = slots();
  // Sub-groups read ahead of the one being updated: every other slot.
  const int ahead = options_.pipeline_read ? K - 1 : 0;
  // Visits alternate direction, so the last sub-groups of one, still in their slots, are the
  // first of the next and are not read again. A sub-group keeps slot g % K either way.
  const auto visited = [&](int i) { return descending_ ? groups - 1 - i : i; };
  const auto slot_of = [&](int g) { return static_cast<size_t>(g % K); };
  const auto settle = [&](size_t slot) {
    if (writing_[slot]) file_.wait(*std::exchange(writing_[slot], std::nullopt));
  };
  std::vector<std::optional<offload::IoTicket>> reading(static_cast<size_t>(K));
  const auto start = [&](int g) {
    const size_t slot = slot_of(g);
    if (access == SubGroupAccess::ReadWrite && held_[slot] == g) return;
    settle(slot);
    held_[slot] = -1;
    if (access == SubGroupAccess::ReadWrite) {
      reading[slot] = file_.read(offset(g, first_swapped()), record(static_cast<int>(slot)),
                                 sizes_.record_bytes);
    } else {
      std::memset(record(static_cast<int>(slot)), 0, static_cast<size_t>(sizes_.record_bytes));
    }
  };
  try {
    int next = 0;
    for (int i = 0; i < groups; ++i) {
      while (next <= i + ahead && next < groups) start(visited(next++));
      const int g = visited(i);
      const size_t slot = slot_of(g);
      if (reading[slot]) file_.wait(*std::exchange(reading[slot], std::nullopt));
      settle(slot);  // the write of a held sub-group, from the visit before, reads the buffer
      held_[slot] = -1;
      fn(states(g, static_cast<int>(slot)));
      writing_[slot] = file_.write(offset(g, first_swapped()), record(static_cast<int>(slot)),
                                   sizes_.record_bytes);
      held_[slot] = g;
      if (!options_.pipeline_write) settle(slot);
    }
    // With pipeline_write the last writes stay in flight: they finish during the next forward
    // and backward, and whatever touches their slots or the file next waits for them.
  } catch (...) {
    // Nothing may still be moving into or out of the buffers once the error leaves here.
    try {
      file_.wait_all();
    } catch (const Error&) {
    }
    std::fill(writing_.begin(), writing_.end(), std::nullopt);
    std::fill(held_.begin(), held_.end(), -1);
    throw;
  }
  descending_ = !descending_;
}

void NvmeStateStore::read(StateKind kind, int64_t begin, int64_t end, float* out) {
  TS_CHECK(begin >= 0 && begin <= end && end <= numel(), "optimizer states: [{}, {}) of {}",
           begin, end, numel());
  if (!swapped(kind)) {
    std::memcpy(out, master_ + begin, static_cast<size_t>(end - begin) * sizeof(float));
    return;
  }
  // Whole segments through the first buffer, once the file holds every value.
  settle_writes();
  if (!held_.empty()) held_[0] = -1;
  auto* bounce = reinterpret_cast<float*>(segment(0, kind));
  for (int g = static_cast<int>(begin / sub_group_elems()); begin < end; ++g) {
    const ShardRange r = sub_group(g);
    const int64_t stop = std::min(end, r.end);
    file_.wait(file_.read(offset(g, kind), bounce,
                          offload::round_up_io(r.numel() * static_cast<int64_t>(sizeof(float)))));
    std::memcpy(out, bounce + (begin - r.begin), static_cast<size_t>(stop - begin) * sizeof(float));
    out += stop - begin;
    begin = stop;
  }
}

void NvmeStateStore::write(StateKind kind, int64_t begin, int64_t end, const float* in) {
  TS_CHECK(begin >= 0 && begin <= end && end <= numel(), "optimizer states: [{}, {}) of {}",
           begin, end, numel());
  if (!swapped(kind)) {
    std::memcpy(master_ + begin, in, static_cast<size_t>(end - begin) * sizeof(float));
    return;
  }
  // The file's values change under the slots that hold them.
  settle_writes();
  std::fill(held_.begin(), held_.end(), -1);
  auto* bounce = reinterpret_cast<float*>(segment(0, kind));
  for (int g = static_cast<int>(begin / sub_group_elems()); begin < end; ++g) {
    const ShardRange r = sub_group(g);
    const int64_t stop = std::min(end, r.end);
    const int64_t bytes = offload::round_up_io(r.numel() * static_cast<int64_t>(sizeof(float)));
    // A part of a segment keeps the rest of it.
    if (begin != r.begin || stop != r.end) file_.wait(file_.read(offset(g, kind), bounce, bytes));
    std::memcpy(bounce + (begin - r.begin), in, static_cast<size_t>(stop - begin) * sizeof(float));
    file_.wait(file_.write(offset(g, kind), bounce, bytes));
    in += stop - begin;
    begin = stop;
  }
}

float* NvmeStateStore::resident(StateKind kind) const {
  return swapped(kind) ? nullptr : master_;
}

int64_t NvmeStateStore::buffer_bytes() const { return sizes_.buffer_bytes; }
int64_t NvmeStateStore::disk_bytes() const { return sizes_.file_bytes; }

}  // namespace tessera::memory
