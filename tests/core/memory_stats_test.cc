// MemoryTracker accounting (current and peak per category and in total) and ScopedTracker,
// which lets thread ranks in one process keep separate counters.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "runtime/core/memory_stats.h"
#include "runtime/core/storage.h"

namespace tessera {
namespace {

TEST(MemoryTrackerTest, CurrentAndPeakPerCategory) {
  MemoryTracker t;
  t.on_alloc(MemCategory::Params, 100);
  t.on_alloc(MemCategory::Grads, 40);
  t.on_alloc(MemCategory::Params, 50);
  t.on_free(MemCategory::Params, 120);
  t.on_alloc(MemCategory::Activations, 10);

  const MemorySnapshot s = t.snapshot();
  EXPECT_EQ(s.current_of(MemCategory::Params), 30);
  EXPECT_EQ(s.peak_of(MemCategory::Params), 150);
  EXPECT_EQ(s.current_of(MemCategory::Grads), 40);
  EXPECT_EQ(s.peak_of(MemCategory::Grads), 40);
  EXPECT_EQ(s.current_of(MemCategory::Activations), 10);
  EXPECT_EQ(s.current_of(MemCategory::Optimizer), 0);
  EXPECT_EQ(s.peak_of(MemCategory::Optimizer), 0);
  EXPECT_EQ(s.total_current, 80);
  // The total peak is the peak of the sum (190 after the third alloc), not the sum of peaks.
  EXPECT_EQ(s.total_peak, 190);
}

TEST(MemoryTrackerTest, ResetPeaksRestartsFromCurrent) {
  MemoryTracker t;
  t.on_alloc(MemCategory::Activations, 1000);
  t.on_free(MemCategory::Activations, 900);
  t.reset_peaks();
  MemorySnapshot s = t.snapshot();
  EXPECT_EQ(s.peak_of(MemCategory::Activations), 100);
  EXPECT_EQ(s.total_peak, 100);
  t.on_alloc(MemCategory::Activations, 50);
  s = t.snapshot();
  EXPECT_EQ(s.peak_of(MemCategory::Activations), 150);
  EXPECT_EQ(s.total_peak, 150);
}

TEST(MemoryTrackerTest, ConcurrentAllocsAreCountedExactly) {
  MemoryTracker t;
  constexpr int kThreads = 4;
  constexpr int kIters = 10000;
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&t] {
      for (int j = 0; j < kIters; ++j) t.on_alloc(MemCategory::Comm, 3);
      for (int j = 0; j < kIters; ++j) t.on_free(MemCategory::Comm, 1);
    });
  }
  for (auto& th : threads) th.join();
  const MemorySnapshot s = t.snapshot();
  EXPECT_EQ(s.current_of(MemCategory::Comm), kThreads * kIters * 2);
  EXPECT_GE(s.peak_of(MemCategory::Comm), kThreads * kIters * 2);
  EXPECT_LE(s.peak_of(MemCategory::Comm), kThreads * kIters * 3);
}

TEST(ScopedTrackerTest, InstallsAndRestoresNested) {
  MemoryTracker outer;
  MemoryTracker inner;
  MemoryTracker* before = &MemoryTracker::current();
  EXPECT_EQ(before, &MemoryTracker::process_default());
  {
    ScopedTracker a(outer);
    EXPECT_EQ(&MemoryTracker::current(), &outer);
    {
      ScopedTracker b(inner);
      EXPECT_EQ(&MemoryTracker::current(), &inner);
    }
    EXPECT_EQ(&MemoryTracker::current(), &outer);
  }
  EXPECT_EQ(&MemoryTracker::current(), before);
}

// Two thread "ranks", each with its own tracker, allocate at the same time: each tracker
// sees only its own thread's storage and the process default sees neither.
TEST(ScopedTrackerTest, IsolatesThreads) {
  const MemorySnapshot default_before = MemoryTracker::process_default().snapshot();
  MemoryTracker rank_trackers[2];
  MemorySnapshot while_alive[2];
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      ScopedTracker scope(rank_trackers[r]);
      const size_t bytes = r == 0 ? 1000 : 3000;
      std::vector<Storage> buffers;
      for (int i = 0; i < 50; ++i) buffers.emplace_back(bytes, MemCategory::Params);
      while_alive[r] = rank_trackers[r].snapshot();
    });
  }
  for (auto& th : threads) th.join();

  EXPECT_EQ(while_alive[0].current_of(MemCategory::Params), 50 * 1000);
  EXPECT_EQ(while_alive[1].current_of(MemCategory::Params), 50 * 3000);
  for (int r = 0; r < 2; ++r) {
    const MemorySnapshot s = rank_trackers[r].snapshot();
    EXPECT_EQ(s.total_current, 0) << "rank " << r;
    EXPECT_EQ(s.peak_of(MemCategory::Params), (r == 0 ? 1000 : 3000) * 50) << "rank " << r;
  }
  const MemorySnapshot default_after = MemoryTracker::process_default().snapshot();
  EXPECT_EQ(default_after.total_peak, default_before.total_peak);
  EXPECT_EQ(default_after.total_current, default_before.total_current);
}

TEST(MemoryFormatTest, Bytes) {
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(2048), "2.0 KiB");
  EXPECT_EQ(format_bytes(int64_t{3} << 20), "3.0 MiB");
  EXPECT_EQ(format_bytes(int64_t{3} << 29), "1.50 GiB");
}

TEST(MemoryFormatTest, SnapshotListsUsedCategories) {
  MemoryTracker t;
  t.on_alloc(MemCategory::Params, 2048);
  t.on_alloc(MemCategory::Optimizer, 4096);
  const std::string line = format_memory(t.snapshot());
  EXPECT_NE(line.find("params 2.0 KiB"), std::string::npos) << line;
  EXPECT_NE(line.find("optimizer 4.0 KiB"), std::string::npos) << line;
  EXPECT_EQ(line.find("grads"), std::string::npos) << line;
  EXPECT_NE(line.find("total 6.0 KiB"), std::string::npos) << line;
}

TEST(MemoryFormatTest, CategoryNames) {
  EXPECT_EQ(mem_category_name(MemCategory::Params), "params");
  EXPECT_EQ(mem_category_name(MemCategory::Grads), "grads");
  EXPECT_EQ(mem_category_name(MemCategory::Optimizer), "optimizer");
  EXPECT_EQ(mem_category_name(MemCategory::Activations), "activations");
  EXPECT_EQ(mem_category_name(MemCategory::Comm), "comm");
  EXPECT_EQ(mem_category_name(MemCategory::Other), "other");
}

TEST(ProcessResidentBytes, ReadsVmRssAndGrowsWithTouchedMemory) {
  const std::string path = ::testing::TempDir() + "/status_" + std::to_string(::getpid());
  {
    std::ofstream f(path);
    f << "Name:\ttessera\nVmHWM:\t  9999 kB\nVmRSS:\t  163232 kB\nRssAnon:\t 95996 kB\n";
  }
  EXPECT_EQ(process_resident_bytes(path), int64_t{163232} * 1024);
  EXPECT_EQ(process_resident_bytes(path + ".missing"), 0);
  // This process: more resident once 64 MiB more are touched.
  const int64_t before = process_resident_bytes();
  ASSERT_GT(before, 0);
  std::vector<char> touched(64 << 20, 1);
  EXPECT_GE(process_resident_bytes(), before + (48 << 20)) << int{touched[12345]};
  std::remove(path.c_str());
}

}  // namespace
}  // namespace tessera
