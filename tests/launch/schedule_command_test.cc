// `tessera schedule`: the timeline it draws is the simulated schedule unit by unit, the bubble
// it prints is the simulation's beside Megatron's formulas, the activations are the slots the
// engine would hold, and bad shapes are refused in one line naming the fix.
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "tests/common/expect_invalid.h"
#include "launch/commands.h"
#include "runtime/core/error.h"

namespace tessera::launch {
namespace {

ScheduleOptions options(int pp, int micro, int virtual_size = 1, const std::string& name = "") {
  ScheduleOptions o;
  o.pp = pp;
  o.micro = micro;
  o.virtual_size = virtual_size;
  o.schedule = name;
  return o;
}

// The cells of rank `rank`'s timeline row (unwrapped output: one row per rank).
std::vector<std::string> row_cells(const std::string& out, int rank) {
  std::istringstream lines(out);
  const std::string want = "rank " + std::to_string(rank) + " | ";
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(want, 0) != 0) continue;
    std::istringstream cells(line.substr(want.size()));
    std::vector<std::string> out_cells;
    for (std::string c; cells >> c;) out_cells.push_back(c);
    return out_cells;
  }
  return {};
}

void expect_contains(const std::string& out, const std::string& part) {
  EXPECT_NE(out.find(part), std::string::npos) << "missing: " << part << "\nin:\n" << out;
}

using tessera::test::expect_invalid;

TEST(ScheduleCommand, OneFOneBTimelineAndBubble) {
  ScheduleOptions o = options(4, 8);
  o.width = 0;
  const std::string out = format_schedule(o);
  expect_contains(out, "1f1b schedule: p = 4 pipeline ranks, m = 8 micro-batches");
  // 3 (m + p - 1) = 33 units, each rank busy 3 m = 24: (p - 1) / m = 0.375 over the ideal.
  expect_contains(out, "bubble, simulated (33 units in all, each rank busy 24)");
  expect_contains(out, "bubble / ideal time  0.3750   Megatron's (p-1)/m = 3/8 = 0.3750");
  expect_contains(out, "idle share of time   0.2727   (p-1)/(m+p-1) = 3/11 = 0.2727");
  // The last rank starts after 3 idle units and alternates F, B from there.
  const std::vector<std::string> last = row_cells(out, 3);
  ASSERT_EQ(last.size(), 33u);
  EXPECT_EQ(std::vector<std::string>(last.begin(), last.begin() + 7),
            (std::vector<std::string>{".", ".", ".", "F0", "B0", "--", "F1"}));
  for (int r = 0; r < 4; ++r) {
    const std::vector<std::string> cells = row_cells(out, r);
    ASSERT_EQ(cells.size(), 33u) << r;
    EXPECT_EQ(std::count(cells.begin(), cells.end(), "."), 9) << r;
    EXPECT_EQ(std::count(cells.begin(), cells.end(), "--"), 8) << r;
    // 1F1B holds p - s micro-batches on rank s.
    expect_contains(out, "  rank " + std::to_string(r) + ": " + std::to_string(4 - r) + "\n");
  }
  expect_contains(out, "rank 3: rA0 F0 B0 sG0 rA1 F1 B1 sG1");
}

TEST(ScheduleCommand, InterleavedShrinksTheBubble) {
  ScheduleOptions o = options(4, 8, 2);
  o.width = 0;
  const std::string out = format_schedule(o);
  expect_contains(out, "interleaved schedule: p = 4 pipeline ranks, m = 8 micro-batches, v = 2");
  expect_contains(out, "F3a: chunk 0 of micro-batch 3, F3b: chunk 1");
  // 3 (v m + p - 1) = 57 units of one chunk's forward; (p - 1) / (v m) over the ideal.
  expect_contains(out, "bubble, simulated (57 units in all, each rank busy 48)");
  expect_contains(out,
                  "bubble / ideal time  0.1875   Megatron's (p-1)/m = 3/8 = 0.3750, interleaved "
                  "(p-1)/(v m) = 3/16 = 0.1875");
  expect_contains(out, "idle share of time   0.1579   (p-1)/(v m+p-1) = 3/19 = 0.1579");
  // Rank 0 warms up with (p - 1) 2 + (v - 1) p = 10 forwards and holds one more.
  expect_contains(out, "  rank 0: 11 = 5.50 whole (slots per chunk store: a 8, b 4)\n");
  const std::vector<std::string> first = row_cells(out, 0);
  ASSERT_EQ(first.size(), 57u);
  EXPECT_EQ(std::vector<std::string>(first.begin(), first.begin() + 11),
            (std::vector<std::string>{"F0a", "F1a", "F2a", "F3a", "F0b", "F1b", "F2b", "F3b", "F4a",
                                      "F5a", "F6a"}));
  // The default is interleaved when --virtual > 1, and the same as naming it.
  EXPECT_EQ(out, format_schedule([&] {
              ScheduleOptions named = o;
              named.schedule = "interleaved";
              return named;
            }()));
}

TEST(ScheduleCommand, WrapsLongTimelines) {
  const std::string out = format_schedule(options(4, 8, 2));  // width 120
  std::istringstream lines(out);
  int blocks = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("time ", 0) == 0) ++blocks;
    if (line.rfind("rank ", 0) == 0 && line.find(" | ") != std::string::npos) {
      EXPECT_LE(line.size(), 120u) << line;
    }
  }
  // 57 units of 4 columns, at most 25 units a block: 3 blocks, evened out to 20, 20, 17.
  EXPECT_EQ(blocks, 3);
}

TEST(ScheduleCommand, RunPrintsTheSameAndRefusesBadShapes) {
  std::ostringstream captured;
  std::streambuf* const saved = std::cout.rdbuf(captured.rdbuf());
  const int rc = run_schedule(options(2, 4, 1, "gpipe"));
  std::cout.rdbuf(saved);
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(captured.str(), format_schedule(options(2, 4, 1, "gpipe")));
  expect_contains(captured.str(), "  rank 0: 4\n");  // GPipe holds every micro-batch

  expect_invalid([] { format_schedule(options(0, 8)); }, "--pp must be >= 1");
  expect_invalid([] { format_schedule(options(4, 0)); }, "--micro must be >= 1");
  expect_invalid([] { format_schedule(options(4, 8, 0)); }, "--virtual must be >= 1");
  expect_invalid([] { format_schedule(options(4, 6, 2)); },
                 "use a multiple of 4 micro-batches (gradient_accumulation_steps), e.g. 4 or 8");
  expect_invalid([] { format_schedule(options(4, 8, 2, "1f1b")); },
                 "--schedule 1f1b runs one model chunk per rank, --virtual 2 needs --schedule "
                 "interleaved");
  expect_invalid([] { format_schedule(options(4, 8, 1, "zb-h1")); }, "--schedule zb-h1 is unknown");
}

}  // namespace
}  // namespace tessera::launch
