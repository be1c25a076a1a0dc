// ZeRO-Infinity's optimizer tier on disk: a rank's fp32 optimizer states in a swap file,
// visited sub-group by sub-group through a few buffers. With pipeline_read the next
// sub-groups are read while one is updated, with pipeline_write each is written back behind
// the update, the last of a visit finishing during the next forward and backward. Visits
// alternate direction, so the sub-groups a visit ends with are still in memory when the next
// one starts with them and are not read again. The update itself is the caller's, on the same
// values, so a run with the states on disk gives the bits of one with them in memory.
//
// File layout: sub-group g's record at g * record_bytes holds one segment per swapped state
// (master, exp_avg, exp_avg_sq; without the master when it is the resident fp32 working
// copy), each padded to kIoAlign so every transfer is aligned.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "memory/offload/async_io.h"
#include "memory/offload/offload_options.h"
#include "memory/state_store.h"
#include "runtime/core/storage.h"

namespace tessera::memory {

class NvmeStateStore final : public StateStore {
 public:
  // resident_master: the fp32 master when it stays in memory (f32 training, where it is the
  // working copy), else nullptr to swap it too. name prefixes the swap file's name. Throws
  // IoError for a missing, unwritable or full nvme_path, InvalidArgument for a buffer_count
  // that holds less than one sub-group.
  NvmeStateStore(int64_t numel, int64_t sub_group_elems, float* resident_master,
                 const OffloadOptimizerOptions& options, const offload::AioOptions& aio,
                 const std::string& name);
  ~NvmeStateStore() override;

  void for_each_sub_group(const SubGroupFn& fn,
                          SubGroupAccess access = SubGroupAccess::ReadWrite) override;
  void read(StateKind kind, int64_t begin, int64_t end, float* out) override;
  void write(StateKind kind, int64_t begin, int64_t end, const float* in) override;
  float* resident(StateKind kind) const override;
  int64_t buffer_bytes() const override;
  int64_t disk_bytes() const override;

  int slots() const { return slots_; }
  const offload::SwapFile& file() const { return file_; }

  // What a store of these options holds, without making one (the memory plan's numbers).
  struct Sizes {
    int swapped_states = 0;
    int64_t segment_bytes = 0;  // one state of one sub-group, aligned
    int64_t record_bytes = 0;   // one sub-group
    int slots = 0;
    int64_t buffer_bytes = 0;
    int64_t file_bytes = 0;
  };
  static Sizes plan(int64_t numel, int64_t sub_group_elems, bool master_resident,
                    const OffloadOptimizerOptions& options);

 private:
  int64_t offset(int g, StateKind kind) const;
  // A record's first state: exp_avg when the master stays in memory.
  StateKind first_swapped() const { return master_ != nullptr ? StateKind::ExpAvg : StateKind::Master; }
  char* record(int slot) const {
    return static_cast<char*>(buffer_.data()) + int64_t{slot} * sizes_.record_bytes;
  }
  char* segment(int slot, StateKind kind) const;
  bool swapped(StateKind kind) const { return kind != StateKind::Master || master_ == nullptr; }
  SubGroupStates states(int g, int slot) const;
  void settle_writes();  // waits for every write still in flight

  float* master_;  // resident master, or nullptr
  OffloadOptimizerOptions options_;
  Sizes sizes_;
  Storage buffer_;  // slots() records, one allocation (io_storage rounds small ones up)
  int slots_ = 0;
  offload::SwapFile file_;
  std::vector<int> held_;  // per slot: the sub-group whose current values it holds, or -1
  std::vector<std::optional<offload::IoTicket>> writing_;  // per slot: a write in flight
  bool descending_ = false;                                // the next visit's direction
};

}  // namespace tessera::memory
