// The optimizer states' store: NvmeStateStore (states in a swap file, sub-group by sub-group
// through a few buffers) behaves exactly as ResidentStateStore (views of memory):
// - for_each_sub_group visits the same sub-groups with the same values, and what it writes is
//   read back, for every buffer count and read-ahead / write-behind setting, with the master
//   swapped (16-bit training) or resident (f32); visits alternate direction, and the
//   sub-groups still in the buffers from the visit before are not read again;
// - Overwrite mode starts from zeros; read / write of any range (across sub-groups, within
//   one) keep the rest;
// - the plan's sizes are what the store allocates, and too few buffers, a missing or full
//   nvme_path, and an injected I/O error are one-line errors that leave nothing hanging, also
//   when the failed write is one a visit left in flight.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "memory/offload/nvme_state_store.h"
#include "runtime/core/error.h"
#include "runtime/core/memory_stats.h"
#include "swap_dir.h"

namespace tessera::memory {
namespace {

std::vector<float> random_values(int64_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(gen);
  return v;
}

OffloadOptimizerOptions nvme_options(const std::string& dir, int buffers, bool read_ahead,
                                     bool write_behind) {
  OffloadOptimizerOptions o;
  o.device = OffloadDevice::Nvme;
  o.nvme_path = dir;
  o.buffer_count = buffers;
  o.pipeline_read = read_ahead;
  o.pipeline_write = write_behind;
  return o;
}

offload::AioOptions small_blocks() {
  offload::AioOptions a;
  a.block_size = 64 << 10;  // many requests per record
  a.queue_depth = 4;
  return a;
}

// A deterministic "update" of a sub-group: each value moves by a function of its index and
// the pass, so a lost, stale or misplaced sub-group shows in the result.
void update(const SubGroupStates& g, int pass) {
  for (int64_t i = 0; i < g.range.numel(); ++i) {
    const auto at = static_cast<float>(g.range.begin + i);
    g.master[i] = g.master[i] * 0.5f + at * 1e-3f + static_cast<float>(pass);
    g.exp_avg[i] += g.master[i];
    g.exp_avg_sq[i] = g.exp_avg_sq[i] * 0.25f - at;
  }
}

struct Case {
  int buffers;
  bool read_ahead, write_behind, master_resident;
};

class NvmeStates : public testing::TestWithParam<Case> {};

TEST_P(NvmeStates, MatchResidentStatesOverSeveralPasses) {
  const Case c = GetParam();
  SwapDir dir;
  // 10 sub-groups of 3000 and a last one of 1000: segments of 12000 bytes round to 12288.
  constexpr int64_t kNumel = 31000, kSub = 3000;
  std::vector<float> master = random_values(kNumel, 1), m(kNumel, 0.0f), v(kNumel, 0.0f);
  std::vector<float> swapped_master = master;  // the resident master the nvme store keeps
  ResidentStateStore expected(kNumel, kSub, master.data(), m.data(), v.data());
  NvmeStateStore store(kNumel, kSub, c.master_resident ? swapped_master.data() : nullptr,
                       nvme_options(dir.path, c.buffers, c.read_ahead, c.write_behind),
                       small_blocks(), "test");
  ASSERT_EQ(store.num_sub_groups(), 11);
  // The initial values, written as start-up does.
  const std::vector<float> initial = master;
  store.for_each_sub_group(
      [&](const SubGroupStates& g) {
        if (!c.master_resident) {
          std::copy(initial.begin() + g.range.begin, initial.begin() + g.range.end, g.master);
        }
        for (int64_t i = 0; i < g.range.numel(); ++i) {
          ASSERT_EQ(g.exp_avg[i], 0.0f);  // Overwrite starts from zeros
          ASSERT_EQ(g.exp_avg_sq[i], 0.0f);
        }
      },
      SubGroupAccess::Overwrite);
  const int64_t record_bytes =
      (c.master_resident ? 2 : 3) * offload::round_up_io(kSub * static_cast<int64_t>(sizeof(float)));
  for (int pass = 0; pass < 3; ++pass) {
    std::vector<ShardRange> seen;
    expected.for_each_sub_group([&](const SubGroupStates& g) { update(g, pass); },
                                SubGroupAccess::ReadWrite);
    const int64_t read_before = store.file().bytes_read();
    store.for_each_sub_group(
        [&](const SubGroupStates& g) {
          seen.push_back(g.range);
          update(g, pass);
        },
        SubGroupAccess::ReadWrite);
    // Every sub-group once, against the direction of the visit before (the Overwrite visit
    // was ascending, so pass 0 descends).
    ASSERT_EQ(seen.size(), 11u);
    const bool descending = pass % 2 == 0;
    for (size_t i = 0; i < seen.size(); ++i) {
      const auto g = static_cast<int64_t>(descending ? seen.size() - 1 - i : i);
      EXPECT_EQ(seen[i].begin, g * kSub);
      EXPECT_EQ(seen[i].end, std::min<int64_t>(kNumel, (g + 1) * kSub));
    }
    // The sub-groups the visit before ended with were still in the buffers.
    EXPECT_EQ(store.file().bytes_read() - read_before, (11 - store.slots()) * record_bytes);
  }
  for (StateKind kind : {StateKind::Master, StateKind::ExpAvg, StateKind::ExpAvgSq}) {
    std::vector<float> got(kNumel, -1.0f), want(kNumel);
    expected.read(kind, 0, kNumel, want.data());
    store.read(kind, 0, kNumel, got.data());
    for (int64_t i = 0; i < kNumel; ++i) {
      ASSERT_EQ(got[static_cast<size_t>(i)], want[static_cast<size_t>(i)])
          << "state " << static_cast<int>(kind) << " element " << i;
    }
  }
  EXPECT_EQ(store.resident(StateKind::Master) != nullptr, c.master_resident);
  EXPECT_EQ(store.resident(StateKind::ExpAvg), nullptr);
  // Each visit wrote every record once (read() waited for the last writes).
  EXPECT_EQ(store.file().bytes_written(), 4 * 11 * record_bytes);
}

INSTANTIATE_TEST_SUITE_P(Buffers, NvmeStates,
                         testing::Values(Case{3, false, false, false}, Case{3, true, true, false},
                                         Case{6, true, false, false}, Case{6, false, true, false},
                                         Case{9, true, true, false}, Case{12, true, true, false},
                                         Case{2, false, false, true}, Case{4, true, true, true},
                                         Case{6, true, true, true}),
                         [](const testing::TestParamInfo<Case>& info) {
                           const Case& c = info.param;
                           return fmt::format("buffers{}_{}read_{}write_{}", c.buffers,
                                              c.read_ahead ? "" : "no", c.write_behind ? "" : "no",
                                              c.master_resident ? "f32" : "16bit");
                         });

TEST(NvmeStates, ReadAndWriteRangesKeepTheRest) {
  SwapDir dir;
  constexpr int64_t kNumel = 10000, kSub = 1024;
  NvmeStateStore store(kNumel, kSub, nullptr, nvme_options(dir.path, 3, false, false),
                       small_blocks(), "ranges");
  const std::vector<float> all = random_values(kNumel, 2);
  store.write(StateKind::ExpAvgSq, 0, kNumel, all.data());
  // Across sub-group edges and inside one.
  const std::vector<float> patch = random_values(3000, 3);
  store.write(StateKind::ExpAvgSq, 1000, 4000, patch.data());
  store.write(StateKind::ExpAvgSq, 5000, 5001, patch.data());
  std::vector<float> want = all;
  std::copy(patch.begin(), patch.end(), want.begin() + 1000);
  want[5000] = patch[0];
  std::vector<float> got(kNumel);
  store.read(StateKind::ExpAvgSq, 0, kNumel, got.data());
  EXPECT_EQ(got, want);
  std::vector<float> piece(7);
  store.read(StateKind::ExpAvgSq, 1021, 1028, piece.data());
  EXPECT_EQ(piece, std::vector<float>(want.begin() + 1021, want.begin() + 1028));
  // The other states were not touched.
  store.read(StateKind::ExpAvg, 0, kNumel, got.data());
  EXPECT_EQ(got, std::vector<float>(kNumel, 0.0f));
}

TEST(NvmeStates, PlanIsWhatTheStoreHolds) {
  SwapDir dir;
  MemoryTracker tracker;
  ScopedTracker scope(tracker);
  constexpr int64_t kNumel = 100000, kSub = 16384;
  const OffloadOptimizerOptions o = nvme_options(dir.path, 9, true, true);
  const NvmeStateStore::Sizes plan = NvmeStateStore::plan(kNumel, kSub, false, o);
  EXPECT_EQ(plan.swapped_states, 3);
  EXPECT_EQ(plan.segment_bytes, kSub * 4);
  EXPECT_EQ(plan.slots, 3);
  EXPECT_EQ(plan.buffer_bytes, offload::io_storage_bytes(3 * plan.record_bytes));
  EXPECT_EQ(plan.file_bytes, 7 * 3 * kSub * 4);  // 7 sub-groups
  NvmeStateStore store(kNumel, kSub, nullptr, o, {}, "plan");
  EXPECT_EQ(store.slots(), plan.slots);
  EXPECT_EQ(store.buffer_bytes(), plan.buffer_bytes);
  EXPECT_EQ(tracker.snapshot().current_of(MemCategory::Optimizer), plan.buffer_bytes);
  EXPECT_EQ(store.disk_bytes(), plan.file_bytes);
  // Never more slots than sub-groups.
  EXPECT_EQ(NvmeStateStore::plan(1000, kSub, false, o).slots, 1);
}

TEST(NvmeStates, RefusesTooFewBuffersAndABadPath) {
  SwapDir dir;
  try {
    NvmeStateStore store(1000, 100, nullptr, nvme_options(dir.path, 2, false, false), {}, "few");
    FAIL() << "two buffers for three states were accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("buffer_count 2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("at least 3"), std::string::npos) << e.what();
  }
  try {
    NvmeStateStore store(1000, 100, nullptr, nvme_options(dir.path + "/missing", 3, false, false),
                         {}, "gone");
    FAIL() << "a missing nvme_path was accepted";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
  }
}

TEST(NvmeStates, AnInjectedIoErrorFailsTheVisitAndEveryLaterOne) {
  SwapDir dir;
  NvmeStateStore store(40000, 4096, nullptr, nvme_options(dir.path, 9, true, true), small_blocks(),
                       "eio");
  offload::inject_io_error_after(5);
  int visited = 0;
  EXPECT_THROW(store.for_each_sub_group([&](const SubGroupStates& g) { update(g, visited++); }),
               IoError);
  offload::inject_io_error_after(0);
  EXPECT_LT(visited, store.num_sub_groups());
  // The file's contents are unknown now: later visits fail too, at once.
  EXPECT_THROW(store.for_each_sub_group([](const SubGroupStates&) {}), IoError);
}

TEST(NvmeStates, AWriteLeftInFlightByAVisitFailsTheNextAccess) {
  SwapDir dir;
  // 10 sub-groups of 4096: a record of three 16 KiB segments is one 64 KiB request.
  NvmeStateStore store(40960, 4096, nullptr, nvme_options(dir.path, 9, true, true), small_blocks(),
                       "late");
  // The Overwrite visit reads nothing and writes 10 records: the last one fails, after the
  // visit has returned or while it is still moving.
  offload::inject_io_error_after(10);
  store.for_each_sub_group([](const SubGroupStates&) {}, SubGroupAccess::Overwrite);
  std::vector<float> out(4096);
  EXPECT_THROW(store.read(StateKind::ExpAvg, 0, 4096, out.data()), IoError);
  offload::inject_io_error_after(0);
  EXPECT_THROW(store.for_each_sub_group([](const SubGroupStates&) {}), IoError);
}

}  // namespace
}  // namespace tessera::memory
