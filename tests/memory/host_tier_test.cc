// ZeRO-Offload's host tier (memory/offload/host_tier.h) over the memcpy twin with every copy
// slowed down, so a missing wait would read stale values:
// - gradients reported as their buckets land are copied then, the rest when the optimizer
//   asks, and the host copy is the device's, whatever the order of the reports;
// - the update's write-back goes through two staging buffers: a third range waits for the
//   first's copy, and after flush() the device holds every value written;
// - forget_reported() (a gradient hook about to change them) makes the host copy again;
// - misuse is refused (a range twice in a step, a report after the host copy was taken, a
//   range larger than a sub-group, a buffer handed out twice);
// - the page-locked bytes are the plan's and are charged to the memory tracker.
#include "memory/offload/host_tier.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/core/memcpy_copy_engine.h"
#include "runtime/core/memory_stats.h"

namespace tessera::memory {
namespace {

using namespace std::chrono_literals;

MemcpyCopyEngine::Options slow() {
  MemcpyCopyEngine::Options o;
  o.copy_delay = 2ms;
  return o;
}

TEST(HostTier, GradientsReportedOrNotAllReachTheHost) {
  MemcpyCopyEngine engine(slow());
  constexpr int64_t kNumel = 1000;
  std::vector<float> device_grads(kNumel), device_params(kNumel, 0.0f);
  HostTier tier(engine, kNumel, DType::F32, 300, device_grads.data(), device_params.data());
  for (int step = 0; step < 3; ++step) {
    tier.start_pass();
    for (int64_t i = 0; i < kNumel; ++i) device_grads[i] = static_cast<float>(step * kNumel + i);
    // Backward order: the last bucket first; [0, 100) and [400, 450) are never reported.
    tier.grads_ready(700, 1000);
    tier.grads_ready(450, 700);
    tier.grads_ready(100, 400);
    const auto* host = static_cast<const float*>(tier.host_grads());
    for (int64_t i = 0; i < kNumel; ++i) {
      ASSERT_EQ(host[i], static_cast<float>(step * kNumel + i)) << "step " << step << " elem " << i;
    }
    EXPECT_EQ(tier.pass_stats().grad_copies, 3);
    EXPECT_EQ(tier.pass_stats().late_grad_copies, 2);
    // Taken: a later report is a bug in the caller, asking again is not.
    EXPECT_THROW(tier.grads_ready(0, 10), InvalidArgument);
    EXPECT_EQ(tier.host_grads(), host);
  }
  tier.start_pass();
  tier.grads_ready(0, 500);
  EXPECT_THROW(tier.grads_ready(400, 600), InvalidArgument);   // overlaps the first
  EXPECT_THROW(tier.grads_ready(900, 1001), InvalidArgument);  // past the shard
}

TEST(HostTier, GradientsChangedAfterTheirReportAreCopiedAgainWhenForgotten) {
  MemcpyCopyEngine engine(slow());
  std::vector<float> device_grads(100, 1.0f), device_params(100);
  HostTier tier(engine, 100, DType::F32, 100, device_grads.data(), device_params.data());
  tier.start_pass();
  tier.grads_ready(0, 100);
  tier.forget_reported();  // the copy has landed; the next change must reach the host too
  device_grads[7] = 5.0f;
  const auto* host = static_cast<const float*>(tier.host_grads());
  EXPECT_EQ(host[7], 5.0f);
  EXPECT_EQ(host[8], 1.0f);
  EXPECT_EQ(tier.pass_stats().late_grad_copies, 1);
  EXPECT_THROW(tier.forget_reported(), InvalidArgument);  // taken already
}

TEST(HostTier, WriteBackIsDoubleBufferedAndLandsOnFlush) {
  MemcpyCopyEngine::Options o;
  o.copy_delay = 30ms;
  MemcpyCopyEngine engine(o);
  constexpr int64_t kNumel = 10;
  std::vector<uint16_t> device_grads(kNumel), device_params(kNumel, 0);
  HostTier tier(engine, kNumel, DType::BF16, 4, device_grads.data(), device_params.data());
  const auto fill = [&](int64_t begin, int64_t end, uint16_t value) {
    auto* b = static_cast<uint16_t*>(tier.write_buffer(begin, end));
    for (int64_t i = 0; i < end - begin; ++i) b[i] = static_cast<uint16_t>(value + i);
    tier.commit(begin, end);
  };
  const auto start = std::chrono::steady_clock::now();
  fill(0, 4, 100);
  fill(4, 8, 200);
  // Both copies are queued, neither waited for: the second buffer's is still in flight.
  EXPECT_LT(std::chrono::steady_clock::now() - start, 30ms);
  EXPECT_EQ(device_params[4], 0);
  fill(8, 10, 300);  // reuses the first buffer: waits for its copy to land
  EXPECT_EQ(device_params[0], 100);
  EXPECT_EQ(device_params[3], 103);
  tier.flush();
  for (int64_t i = 0; i < kNumel; ++i) {
    EXPECT_EQ(device_params[i], i < 4 ? 100 + i : i < 8 ? 200 + i - 4 : 300 + i - 8) << i;
  }
  EXPECT_EQ(tier.pass_stats().param_copies, 3);
  EXPECT_THROW(tier.write_buffer(0, 5), InvalidArgument);  // more than a sub-group
  tier.write_buffer(0, 4);
  EXPECT_THROW(tier.commit(0, 3), InvalidArgument);  // not the range handed out
  tier.commit(0, 4);
  tier.flush();
}

TEST(HostTier, PinnedBytesAreThePlansAndAreCounted) {
  MemcpyCopyEngine engine;
  MemoryTracker tracker;
  ScopedTracker scope(tracker);
  constexpr int64_t kNumel = 5000;
  std::vector<uint16_t> device(kNumel);
  {
    HostTier tier(engine, kNumel, DType::F16, 1024, device.data(), device.data());
    const int64_t planned = HostTier::plan_pinned_bytes(kNumel, DType::F16, 1024);
    EXPECT_EQ(planned, kNumel * (12 + 2) + 2 * 1024 * 2);
    EXPECT_EQ(tier.pinned_bytes(), planned);
    EXPECT_EQ(engine.stats().host_bytes, planned);
    const MemorySnapshot s = tracker.snapshot();
    EXPECT_EQ(s.current_of(MemCategory::Optimizer), kNumel * 12);
    EXPECT_EQ(s.current_of(MemCategory::Grads), kNumel * 2);
    EXPECT_EQ(s.current_of(MemCategory::Params), 2 * 1024 * 2);
    for (StateKind k : {StateKind::Master, StateKind::ExpAvg, StateKind::ExpAvgSq}) {
      EXPECT_EQ(tier.state(k)[kNumel - 1], 0.0f);  // zeroed
    }
  }
  EXPECT_EQ(tracker.snapshot().total_current, 0);
  EXPECT_EQ(engine.stats().host_bytes, 0);
}

TEST(HostTier, AFailedCopyStopsTheStepWithItsError) {
  MemcpyCopyEngine engine;
  std::vector<float> grads(100, 1.0f), params(100);
  HostTier tier(engine, 100, DType::F32, 100, grads.data(), params.data());
  tier.start_pass();
  MemcpyCopyEngine::inject_copy_failure_after(1);
  tier.grads_ready(0, 50);
  MemcpyCopyEngine::inject_copy_failure_after(0);
  EXPECT_THROW(tier.host_grads(), IoError);
}

}  // namespace
}  // namespace tessera::memory
