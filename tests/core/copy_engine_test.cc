// The CPU twin of a device's copy engine (runtime/core/memcpy_copy_engine.h): copies of one
// direction land in queue order and really run behind the caller (a slowed copy is not done
// until waited for), the two directions run independently, a failed copy reaches whoever
// waits for it and every later wait, and the host memory it hands out is zeroed and counted.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/core/memcpy_copy_engine.h"

namespace tessera {
namespace {

using namespace std::chrono_literals;

TEST(MemcpyCopyEngine, CopiesLandInOrderAndOnlyWhenWaitedFor) {
  MemcpyCopyEngine::Options o;
  o.copy_delay = 20ms;
  MemcpyCopyEngine engine(o);
  std::vector<int> device(4, 0);
  int* host = static_cast<int*>(engine.allocate_host(4 * sizeof(int)));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(host[i], 0);  // zero-filled
  for (int i = 0; i < 4; ++i) host[i] = i + 1;
  // Two copies into the same place: the later one must win.
  const CopyTicket first = engine.copy_to_device(device.data(), host, 2 * sizeof(int));
  const CopyTicket second = engine.copy_to_device(device.data(), host + 2, 2 * sizeof(int));
  EXPECT_EQ(first.sequence, 1);
  EXPECT_EQ(second.sequence, 2);
  EXPECT_EQ(device[0], 0) << "a 20 ms copy finished before the call returned";
  engine.wait(second);  // waits for the first as well
  EXPECT_EQ(device[0], 3);
  EXPECT_EQ(device[1], 4);
  const CopyStats s = engine.stats();
  EXPECT_EQ(s.to_device_copies, 2);
  EXPECT_EQ(s.to_device_bytes, static_cast<int64_t>(4 * sizeof(int)));
  EXPECT_EQ(s.to_host_copies, 0);
  EXPECT_EQ(s.host_bytes, static_cast<int64_t>(4 * sizeof(int)));
  engine.free_host(host, 4 * sizeof(int));
  EXPECT_EQ(engine.stats().host_bytes, 0);
  EXPECT_EQ(engine.stats().host_peak_bytes, static_cast<int64_t>(4 * sizeof(int)));
}

TEST(MemcpyCopyEngine, TheTwoDirectionsDoNotWaitForEachOther) {
  MemcpyCopyEngine::Options o;
  o.copy_delay = 200ms;
  MemcpyCopyEngine engine(o);
  std::vector<char> a(64, 1), b(64, 0), c(64, 2), d(64, 0);
  const auto start = std::chrono::steady_clock::now();
  const CopyTicket down = engine.copy_to_host(b.data(), a.data(), a.size());
  const CopyTicket up = engine.copy_to_device(d.data(), c.data(), c.size());
  engine.wait(down);
  engine.wait(up);
  // In parallel, one delay; one after the other would take two.
  EXPECT_LT(std::chrono::steady_clock::now() - start, 390ms);
  EXPECT_EQ(b[63], 1);
  EXPECT_EQ(d[0], 2);
  engine.wait(CopyTicket{});  // no copy: returns at once
  EXPECT_THROW(engine.wait({CopyDirection::ToHost, 5}), InvalidArgument);  // never queued
}

TEST(MemcpyCopyEngine, AFailedCopyReachesItsWaiterAndEveryLaterOne) {
  MemcpyCopyEngine engine;
  std::vector<char> a(16, 7), b(16, 0);
  MemcpyCopyEngine::inject_copy_failure_after(2);
  const CopyTicket ok = engine.copy_to_host(b.data(), a.data(), 8);
  const CopyTicket bad = engine.copy_to_host(b.data() + 8, a.data() + 8, 8);
  const CopyTicket after = engine.copy_to_host(b.data(), a.data(), 16);
  MemcpyCopyEngine::inject_copy_failure_after(0);
  try {
    engine.wait(bad);
    ADD_FAILURE() << "the injected failure was not reported";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("to the host failed"), std::string::npos) << e.what();
  }
  EXPECT_THROW(engine.wait(after), IoError);
  EXPECT_THROW(engine.synchronize(), IoError);
  EXPECT_EQ(b[0], 7);  // the copy before the failure landed
  EXPECT_EQ(b[8], 0);  // the failed one and the one after it did not
  (void)ok;
}

TEST(MemcpyCopyEngine, ShutsDownWithCopiesStillQueued) {
  std::vector<char> a(1 << 20, 3), b(1 << 20, 0);
  {
    MemcpyCopyEngine::Options o;
    o.copy_delay = 5ms;
    MemcpyCopyEngine engine(o);
    for (int i = 0; i < 8; ++i) engine.copy_to_device(b.data(), a.data(), a.size());
  }  // the destructor finishes them before the buffers go
  EXPECT_EQ(b.back(), 3);
}

}  // namespace
}  // namespace tessera
