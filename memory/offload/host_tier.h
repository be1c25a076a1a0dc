// ZeRO-Offload's host tier for a device backend (offload_optimizer.device cpu): a rank's fp32
// optimizer states (master, exp_avg, exp_avg_sq) live in page-locked host memory and AdamW
// runs on the CPU. Per step:
//  1. as each gradient bucket's reduction lands, grads_ready() queues the copy of the shard's
//     piece of it to the host (the rest of backward runs meanwhile);
//  2. host_grads() queues whatever was not reported, waits, and returns the host copy that
//     the CPU AdamW reads;
//  3. the update writes each sub-group's new working parameters into one of two staging
//     buffers (write_buffer), commit() queues its copy back to the device while the next
//     sub-group is updated, flush() waits before the next forward.
// The copies go through a CopyEngine: cudaMemcpyAsync on streams of its own on a GPU, the
// memcpy twin on the CPU backend (runtime/core/memcpy_copy_engine.h), so the pipeline's
// ordering, double buffering and accounting run in every test. The update itself is the
// caller's, on the same values, so the losses are those of the states on the device.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "memory/flat_buffers.h"
#include "memory/param_write_back.h"
#include "memory/state_store.h"
#include "runtime/core/copy_engine.h"
#include "runtime/core/dtype.h"
#include "runtime/core/memory_stats.h"

namespace tessera::memory {

class HostTier final : public ParamWriteBack {
 public:
  // numel: the shard's elements (padding included); device_grads / device_params: the shard's
  // working gradients and parameters in `dtype` on the engine's device; sub_group_elems: the
  // largest write_buffer() range (the optimizer's sub-group).
  HostTier(CopyEngine& engine, int64_t numel, DType dtype, int64_t sub_group_elems,
           const void* device_grads, void* device_params);
  ~HostTier() override;  // waits for the copies in flight
  HostTier(const HostTier&) = delete;
  HostTier& operator=(const HostTier&) = delete;

  int64_t numel() const { return numel_; }
  std::string engine_name() const { return engine_.name(); }
  // The fp32 states in the page-locked pool, numel each.
  float* state(StateKind kind) const { return states_[static_cast<int>(kind)]; }

  // A new step: waits for any copy to the host still in flight (a skipped step's), so the
  // device gradients may be zeroed, and forgets the ranges reported.
  void start_pass();
  // Shard elements [begin, end) of the gradients are final on the device for this step.
  void grads_ready(int64_t begin, int64_t end);
  // Something is about to change the device gradients after their reduction (a test's
  // gradient hook): waits for the copies in flight and forgets the reported ranges, so
  // host_grads() copies everything again.
  void forget_reported();
  // The shard's gradients on the host, every range copied: the reported ones by now, the
  // rest queued here. Further grads_ready() calls wait for start_pass().
  const void* host_grads();

  // ParamWriteBack: [begin, end) of at most sub_group_elems elements.
  void* write_buffer(int64_t begin, int64_t end) override;
  void commit(int64_t begin, int64_t end) override;
  void flush() override;

  // Page-locked bytes held: the states, the gradients' copy and the two staging buffers.
  int64_t pinned_bytes() const;
  static int64_t plan_pinned_bytes(int64_t numel, DType dtype, int64_t sub_group_elems);
  // Copies queued this step to the host (reported ranges and the rest) and to the device.
  struct PassStats {
    int grad_copies = 0, late_grad_copies = 0, param_copies = 0;
  };
  PassStats pass_stats() const { return pass_; }

 private:
  struct Staging {
    void* data = nullptr;
    CopyTicket sent;               // its last copy to the device
    int64_t begin = -1, end = -1;  // the range handed out, until committed
  };
  void* host(size_t bytes, MemCategory category);
  char* at(void* base, int64_t i) const { return static_cast<char*>(base) + i * elem_; }
  void queue_grads(int64_t begin, int64_t end);

  CopyEngine& engine_;
  int64_t numel_;
  DType dtype_;
  int64_t elem_;
  int64_t sub_group_elems_;
  const void* device_grads_;
  void* device_params_;
  MemoryTracker* tracker_;
  struct Allocation {
    void* ptr;
    size_t bytes;
    MemCategory category;
  };
  std::vector<Allocation> allocations_;
  float* states_[kNumStateKinds] = {};
  void* grads_ = nullptr;
  Staging staging_[2];
  int next_staging_ = 0;
  std::vector<ShardRange> reported_;  // this pass
  CopyTicket last_grads_;
  bool grads_taken_ = false;  // host_grads() was called this pass
  PassStats pass_;
};

}  // namespace tessera::memory
