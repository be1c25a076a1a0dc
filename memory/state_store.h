// Where a rank's fp32 optimizer states live, and the one way the optimizer reaches them: in
// sub-groups (DeepSpeed's sub_group_size) of the rank's range, each visited with pointers to
// its master weights and AdamW moments. Resident states are views of buffers owned elsewhere
// (FlatState at stage 0, ShardedOptimizerState at stages 1-3); swapped ones live in a file on
// disk and are read and written around each visit (memory/offload/nvme_state_store.h).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "memory/flat_buffers.h"

namespace tessera::memory {

enum class StateKind { Master, ExpAvg, ExpAvgSq };
inline constexpr int kNumStateKinds = 3;

// One sub-group: elements [range.begin, range.end) of the states (0 is the rank's first
// element), each pointer indexing the sub-group from its first element.
struct SubGroupStates {
  ShardRange range;
  float* master = nullptr;
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
  float* get(StateKind kind) const {
    return kind == StateKind::Master ? master : kind == StateKind::ExpAvg ? exp_avg : exp_avg_sq;
  }
};
using SubGroupFn = std::function<void(const SubGroupStates&)>;

enum class SubGroupAccess {
  ReadWrite,  // fn sees the current values; what it writes is kept
  Overwrite,  // fn writes every element it cares about; the rest read as zero on disk
};

class StateStore {
 public:
  StateStore(int64_t numel, int64_t sub_group_elems);
  virtual ~StateStore() = default;
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  int64_t numel() const { return numel_; }
  int64_t sub_group_elems() const { return sub_group_elems_; }
  int num_sub_groups() const;
  ShardRange sub_group(int g) const;

  // Visits every sub-group once, in an order of the store's choosing (a store on disk
  // alternates directions). Not reentrant.
  virtual void for_each_sub_group(const SubGroupFn& fn,
                                  SubGroupAccess access = SubGroupAccess::ReadWrite) = 0;
  // Copies the values of elements [begin, end) out / in.
  virtual void read(StateKind kind, int64_t begin, int64_t end, float* out) = 0;
  virtual void write(StateKind kind, int64_t begin, int64_t end, const float* in) = 0;
  // The whole resident array of `kind`, or nullptr when it lives on disk.
  virtual float* resident(StateKind kind) const = 0;
  // Bytes held in memory by the store itself (buffers; views hold none) and on disk.
  virtual int64_t buffer_bytes() const { return 0; }
  virtual int64_t disk_bytes() const { return 0; }

 private:
  int64_t numel_;
  int64_t sub_group_elems_;
};

// States in memory: views of three arrays of numel floats.
class ResidentStateStore final : public StateStore {
 public:
  ResidentStateStore(int64_t numel, int64_t sub_group_elems, float* master, float* exp_avg,
                     float* exp_avg_sq);
  void for_each_sub_group(const SubGroupFn& fn,
                          SubGroupAccess access = SubGroupAccess::ReadWrite) override;
  void read(StateKind kind, int64_t begin, int64_t end, float* out) override;
  void write(StateKind kind, int64_t begin, int64_t end, const float* in) override;
  float* resident(StateKind kind) const override;

 private:
  float* arrays_[kNumStateKinds];
};

}  // namespace tessera::memory
