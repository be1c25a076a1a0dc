// The Chrome-trace recorder: spans only while enabled, RAII scopes that nest, the JSON's
// Perfetto fields, write -> read round trips (one rank and four thread ranks gathered to
// rank 0), errors that name the path and leave no file behind, and the bubble on
// hand-made spans with exact fractions.
#include "runtime/engine/trace.h"

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "engine_test_util.h"
#include "parallel/comm/process_group.h"
#include "parallel/comm/thread_group.h"
#include "runtime/core/error.h"

namespace tessera::engine {
namespace {

using json = nlohmann::json;
using test_util::Contains;
using test_util::message_of;
using test_util::OneLine;
using test_util::ScratchDir;

TraceSpan make_span(std::string name, std::string category, int64_t begin, int64_t duration,
                    int micro_batch = -1, int chunk = -1) {
  return TraceSpan{std::move(name), std::move(category), begin, duration, micro_batch, chunk};
}

std::vector<std::string> folder_entries(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// ---- TraceRecorder -------------------------------------------------------------------------

TEST(TraceRecorderTest, RecordsOnlyWhenEnabled) {
  TraceRecorder rec;
  EXPECT_FALSE(rec.enabled());
  {
    auto s = rec.span("F0", kTraceForward, 0);
    EXPECT_FALSE(s.active());
  }
  rec.add(make_span("B0", "backward", 1, 2));
  EXPECT_TRUE(rec.spans().empty());

  rec.set_enabled(true);
  { auto s = rec.span("F0", kTraceForward, 0); }
  rec.add(make_span("B0", "backward", 1, 2, 0));
  ASSERT_EQ(rec.spans().size(), 2u);
  EXPECT_EQ(rec.spans()[0].name, "F0");
  EXPECT_EQ(rec.spans()[0].category, "forward");
  EXPECT_EQ(rec.spans()[0].micro_batch, 0);
  EXPECT_EQ(rec.spans()[0].chunk, -1);
  EXPECT_EQ(rec.spans()[1], make_span("B0", "backward", 1, 2, 0));

  // A scope that began while enabled is kept; one that begins after is not.
  auto late = rec.span("optimizer", kTraceOptimizer);
  rec.set_enabled(false);
  { auto s = rec.span("F1", kTraceForward, 1); }
  late.end();
  ASSERT_EQ(rec.spans().size(), 3u);
  EXPECT_EQ(rec.spans()[2].name, "optimizer");

  rec.clear();
  EXPECT_TRUE(rec.spans().empty());
}

TEST(TraceRecorderTest, ScopesAreMonotonicAndNest) {
  TraceRecorder rec;
  rec.set_enabled(true);
  {
    auto outer = rec.span("step", "other");
    {
      auto inner = rec.span("F0", kTraceForward, 0);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    auto second = rec.span("B0", kTraceBackward, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    second.end();
    second.end();  // a second end records nothing
  }
  // Spans come in the order they ended: the inner ones first.
  ASSERT_EQ(rec.spans().size(), 3u);
  const TraceSpan& f = rec.spans()[0];
  const TraceSpan& b = rec.spans()[1];
  const TraceSpan& step = rec.spans()[2];
  EXPECT_EQ(f.name, "F0");
  EXPECT_EQ(b.name, "B0");
  EXPECT_EQ(step.name, "step");
  EXPECT_GE(f.begin_us, 0);
  EXPECT_GE(f.duration_us, 2000);
  EXPECT_GE(b.duration_us, 1000);
  EXPECT_GE(b.begin_us, f.begin_us + f.duration_us);  // one after the other
  for (const TraceSpan* s : {&f, &b}) {               // both inside the outer span
    EXPECT_GE(s->begin_us, step.begin_us);
    EXPECT_LE(s->begin_us + s->duration_us, step.begin_us + step.duration_us);
  }
}

TEST(TraceRecorderTest, MovedScopeRecordsOnce) {
  TraceRecorder rec;
  rec.set_enabled(true);
  {
    TraceRecorder::Scope a = rec.span("send activation 0", kTraceSend, 0);
    TraceRecorder::Scope b = std::move(a);
    EXPECT_FALSE(a.active());
    EXPECT_TRUE(b.active());
    TraceRecorder::Scope c;
    c = std::move(b);
  }
  ASSERT_EQ(rec.spans().size(), 1u);
  EXPECT_EQ(rec.spans()[0].name, "send activation 0");
  EXPECT_EQ(rec.spans()[0].category, "send");
}

TEST(TraceRecorderTest, SharedOriginAndSyncOrigin) {
  const auto origin = std::chrono::steady_clock::now() - std::chrono::milliseconds(5);
  TraceRecorder a(origin);
  TraceRecorder b(origin);
  EXPECT_EQ(a.origin(), b.origin());
  EXPECT_GE(a.now_us(), 5000);
  EXPECT_EQ(a.to_us(origin + std::chrono::microseconds(7)), 7);
  // Floor, so a time just before the origin is -1 and not 0.
  EXPECT_EQ(a.to_us(origin - std::chrono::nanoseconds(10)), -1);

  a.sync_origin(nullptr);
  EXPECT_GT(a.origin(), origin);
  EXPECT_LT(a.now_us(), 5000);
}

TEST(TraceRecorderTest, SyncOriginOverThreadRanks) {
  std::array<std::chrono::steady_clock::time_point, 4> origins;
  parallel::spawn_ranks(4, [&](parallel::ProcessGroup& group) {
    TraceRecorder rec;
    rec.sync_origin(&group);
    origins[group.rank()] = rec.origin();
  });
  const auto [lo, hi] = std::minmax_element(origins.begin(), origins.end());
  // Every rank left the barrier at about the same time (generous for a loaded machine).
  EXPECT_LT(*hi - *lo, std::chrono::milliseconds(500));
}

// ---- The JSON ------------------------------------------------------------------------------

TEST(TraceFileTest, JsonHasThePerfettoFields) {
  const std::vector<std::vector<TraceSpan>> per_rank = {
      {make_span("F0", "forward", 0, 4, 0), make_span("send activation 0", "send", 4, 1, 0),
       make_span("B0", "backward", 10, 6, 0, 1), make_span("all-reduce grads", "collective", 16, 2),
       make_span("optimizer", "optimizer", 18, 3)},
      {make_span("recv activation 0", "recv", 3, 2, 0), make_span("F0", "forward", 5, 4, 0)}};
  const std::vector<std::string> labels = {"rank 0 (pp 0, tp 0, dp 0)", ""};
  const json doc = json::parse(chrome_trace_json(per_rank, labels));

  EXPECT_EQ(doc.at("displayTimeUnit"), "ms");
  EXPECT_EQ(doc.at("otherData").at("world_size"), 2);
  EXPECT_EQ(doc.at("otherData").at("producer"), "tessera");
  EXPECT_EQ(doc.at("otherData").at("bubble_window_us"), 16);
  ASSERT_TRUE(doc.at("traceEvents").is_array());

  std::map<int, std::string> process_names;
  std::map<std::pair<int, int>, std::string> thread_names;
  std::vector<json> complete;
  for (const json& ev : doc["traceEvents"]) {
    ASSERT_TRUE(ev.contains("ph"));
    ASSERT_TRUE(ev.contains("pid"));
    ASSERT_TRUE(ev.contains("tid"));
    ASSERT_TRUE(ev.contains("name"));
    if (ev["ph"] == "M") {
      if (ev["name"] == "process_name") process_names[ev["pid"]] = ev["args"]["name"];
      if (ev["name"] == "thread_name") thread_names[{ev["pid"], ev["tid"]}] = ev["args"]["name"];
      continue;
    }
    ASSERT_EQ(ev["ph"], "X");
    for (const char* key : {"ts", "dur", "cat", "args"}) ASSERT_TRUE(ev.contains(key)) << key;
    EXPECT_TRUE(ev["ts"].is_number());
    EXPECT_TRUE(ev["dur"].is_number());
    EXPECT_TRUE(ev["args"].is_object());
    complete.push_back(ev);
  }
  EXPECT_EQ(process_names,
            (std::map<int, std::string>{{0, "rank 0 (pp 0, tp 0, dp 0)"}, {1, "rank 1"}}));
  // Tracks: compute 0, send 1, recv 2, collective 3; named only where used.
  EXPECT_EQ(thread_names, (std::map<std::pair<int, int>, std::string>{{{0, 0}, "compute"},
                                                                      {{0, 1}, "send"},
                                                                      {{0, 3}, "collective"},
                                                                      {{1, 0}, "compute"},
                                                                      {{1, 2}, "recv"}}));
  ASSERT_EQ(complete.size(), 7u);
  const json& f0 = complete[0];
  EXPECT_EQ(f0["name"], "F0");
  EXPECT_EQ(f0["cat"], "forward");
  EXPECT_EQ(f0["pid"], 0);
  EXPECT_EQ(f0["tid"], 0);
  EXPECT_EQ(f0["ts"], 0);
  EXPECT_EQ(f0["dur"], 4);
  EXPECT_EQ(f0["args"], (json{{"micro_batch", 0}}));
  EXPECT_EQ(complete[1]["tid"], 1);
  EXPECT_EQ(complete[2]["args"], (json{{"micro_batch", 0}, {"chunk", 1}}));
  EXPECT_EQ(complete[3]["tid"], 3);
  EXPECT_EQ(complete[3]["args"], json::object());  // no micro-batch, no chunk
  EXPECT_EQ(complete[4]["tid"], 0);                // the optimizer on the compute track
  EXPECT_EQ(complete[5]["pid"], 1);
  EXPECT_EQ(complete[5]["tid"], 2);
}

TEST(TraceFileTest, WriteThenReadRoundTrips) {
  ScratchDir dir;
  const std::string path = dir.file("trace.json");
  TraceRecorder rec;
  rec.set_enabled(true);
  rec.add(make_span("F0", "forward", 0, 4, 0));
  rec.add(make_span("B0", "backward", 4, 8, 0, 2));
  rec.add(make_span("idle", "idle", 12, 3));
  { auto s = rec.span("optimizer \"adamw\"", kTraceOptimizer); }
  write_chrome_trace(path, rec, "only rank", nullptr);

  EXPECT_EQ(folder_entries(dir.path()), std::vector<std::string>{"trace.json"});
  const auto back = read_chrome_trace(path);
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0], rec.spans());

  // A rank without spans reads back as an empty rank.
  const std::vector<std::vector<TraceSpan>> three = {
      {make_span("F0", "forward", 1, 2, 0)}, {}, {make_span("B0", "backward", 3, 4, 0)}};
  test_util::write_bytes(path, chrome_trace_json(three, {}));
  EXPECT_EQ(read_chrome_trace(path), three);
}

TEST(TraceFileTest, ReadRejectsWhatIsNotATrace) {
  ScratchDir dir;
  const std::string missing = dir.file("missing.json");
  std::string msg = message_of<InvalidArgument>([&] { read_chrome_trace(missing); });
  EXPECT_TRUE(Contains(msg, missing));

  const std::string other = dir.file("other.json");
  test_util::write_bytes(other, "{\"steps\": 3}");
  msg = message_of<InvalidArgument>([&] { read_chrome_trace(other); });
  EXPECT_TRUE(Contains(msg, other));
  EXPECT_TRUE(Contains(msg, "traceEvents"));

  test_util::write_bytes(other, "{\"traceEvents\": [");
  msg = message_of<InvalidArgument>([&] { read_chrome_trace(other); });
  EXPECT_TRUE(Contains(msg, other));
}

TEST(TraceFileTest, FourThreadRanksGatherIntoOneFile) {
  ScratchDir dir;
  const std::string path = dir.file("trace.json");
  const auto origin = std::chrono::steady_clock::now();
  std::array<std::vector<TraceSpan>, 4> recorded;
  parallel::spawn_ranks(4, [&](parallel::ProcessGroup& group) {
    const int r = group.rank();
    TraceRecorder rec(origin);
    rec.set_enabled(true);
    for (int mb = 0; mb < 2; ++mb) {
      { auto s = rec.span(fmt::format("F{}", mb), kTraceForward, mb); }
      if (r < 3) {
        auto s = rec.span(fmt::format("send activation {}", mb), kTraceSend, mb);
      }
    }
    // Ranks record different amounts, so the gather's blocks differ in size.
    for (int i = 0; i < r; ++i) {
      rec.add(make_span(fmt::format("B{}", i), "backward", 100 + i, 1, i));
    }
    recorded[r] = rec.spans();
    write_chrome_trace(path, rec, fmt::format("rank {} (pp {}, tp 0, dp 0)", r, r), &group);
  });

  EXPECT_EQ(folder_entries(dir.path()), std::vector<std::string>{"trace.json"});
  const auto back = read_chrome_trace(path);
  ASSERT_EQ(back.size(), 4u);
  for (int r = 0; r < 4; ++r) EXPECT_EQ(back[r], recorded[r]) << "rank " << r;

  const json doc = json::parse(test_util::read_bytes(path));
  std::map<int, std::string> process_names;
  std::set<int> pids_with_spans;
  for (const json& ev : doc["traceEvents"]) {
    if (ev["ph"] == "M" && ev["name"] == "process_name")
      process_names[ev["pid"]] = ev["args"]["name"];
    if (ev["ph"] == "X") pids_with_spans.insert(ev["pid"].get<int>());
  }
  EXPECT_EQ(pids_with_spans, (std::set<int>{0, 1, 2, 3}));
  ASSERT_EQ(process_names.size(), 4u);
  EXPECT_EQ(process_names[3], "rank 3 (pp 3, tp 0, dp 0)");
  EXPECT_EQ(doc["otherData"]["world_size"], 4);
}

TEST(TraceFileTest, UnwritablePathIsNamedAndLeavesNoFile) {
  ScratchDir dir;
  TraceRecorder rec;
  rec.set_enabled(true);
  rec.add(make_span("F0", "forward", 0, 1, 0));

  // The folder does not exist.
  const std::string in_missing = dir.file("no_such_folder/trace.json");
  std::string msg =
      message_of<InvalidArgument>([&] { write_chrome_trace(in_missing, rec, "", nullptr); });
  EXPECT_TRUE(Contains(msg, in_missing));
  EXPECT_TRUE(OneLine(msg));
  EXPECT_TRUE(folder_entries(dir.path()).empty());

  // The path is a folder: the temporary file is written, cannot be renamed, and is removed.
  std::filesystem::create_directory(dir.path() / "a_folder");
  const std::string a_folder = dir.file("a_folder");
  msg = message_of<InvalidArgument>([&] { write_chrome_trace(a_folder, rec, "", nullptr); });
  EXPECT_TRUE(Contains(msg, a_folder));
  EXPECT_TRUE(OneLine(msg));
  EXPECT_EQ(folder_entries(dir.path()), std::vector<std::string>{"a_folder"});
  EXPECT_TRUE(folder_entries(dir.path() / "a_folder").empty());

  // Over thread ranks every rank throws, each naming the path (none waits for rank 0).
  std::array<std::string, 4> messages;
  msg = message_of<Error>([&] {
    parallel::spawn_ranks(4, [&](parallel::ProcessGroup& group) {
      try {
        write_chrome_trace(in_missing, rec, "", &group);
      } catch (const Error& e) {
        messages[group.rank()] = e.what();
        throw;
      }
    });
  });
  EXPECT_TRUE(Contains(msg, in_missing));
  for (int r = 0; r < 4; ++r) EXPECT_TRUE(Contains(messages[r], in_missing)) << "rank " << r;
  EXPECT_EQ(folder_entries(dir.path()), std::vector<std::string>{"a_folder"});
}

// ---- The bubble ----------------------------------------------------------------------------

TEST(TraceBubbleTest, ExactFractions) {
  // Window [0, 10): rank 0 is busy all of it, rank 1 for 6 of the 10 microseconds.
  const std::vector<std::vector<TraceSpan>> per_rank = {
      {make_span("F0", "forward", 0, 4, 0), make_span("B0", "backward", 4, 6, 0)},
      {make_span("F0", "forward", 1, 3, 0), make_span("B0", "backward", 5, 3, 0),
       make_span("recv", "recv", 0, 1), make_span("idle", "idle", 8, 2)}};
  const BubbleStats b = compute_bubble(per_rank);
  EXPECT_EQ(b.window_us, 10);
  ASSERT_EQ(b.per_rank.size(), 2u);
  EXPECT_DOUBLE_EQ(b.per_rank[0], 0.0);
  EXPECT_DOUBLE_EQ(b.per_rank[1], 0.4);
  EXPECT_DOUBLE_EQ(b.mean, 0.2);

  // Counting only forward: window [0, 4), rank 0 busy 4, rank 1 busy 3.
  const std::vector<std::string> forward_only = {"forward"};
  const BubbleStats f = compute_bubble(per_rank, forward_only);
  EXPECT_EQ(f.window_us, 4);
  EXPECT_DOUBLE_EQ(f.per_rank[0], 0.0);
  EXPECT_DOUBLE_EQ(f.per_rank[1], 0.25);
  EXPECT_DOUBLE_EQ(f.mean, 0.125);
}

TEST(TraceBubbleTest, GPipeMatchesTheTextbookFormula) {
  // Two stages, two micro-batches, every forward and backward 1 us: the bubble is
  // (p - 1) / (m + p - 1) = 1/3 on both stages. The trailing all-reduce and optimizer are
  // not busy and do not widen the window.
  const std::vector<std::vector<TraceSpan>> per_rank = {
      {make_span("F0", "forward", 0, 1, 0), make_span("F1", "forward", 1, 1, 1),
       make_span("B0", "backward", 4, 1, 0), make_span("B1", "backward", 5, 1, 1),
       make_span("all-reduce grads", "collective", 6, 5),
       make_span("optimizer", "optimizer", 11, 3)},
      {make_span("F0", "forward", 1, 1, 0), make_span("F1", "forward", 2, 1, 1),
       make_span("B0", "backward", 3, 1, 0), make_span("B1", "backward", 4, 1, 1)}};
  const BubbleStats b = compute_bubble(per_rank);
  EXPECT_EQ(b.window_us, 6);
  EXPECT_DOUBLE_EQ(b.per_rank[0], 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(b.per_rank[1], 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(b.mean, 1.0 / 3.0);
}

TEST(TraceBubbleTest, OverlapsCountOnceAndEdgeCases) {
  // Nested and overlapping busy spans: covered [0, 6) and [8, 10) = 8 of 10.
  const std::vector<std::vector<TraceSpan>> nested = {
      {make_span("B0", "backward", 0, 5), make_span("inner", "backward", 1, 2),
       make_span("F1", "forward", 4, 2), make_span("F2", "forward", 8, 2)}};
  const BubbleStats n = compute_bubble(nested);
  EXPECT_EQ(n.window_us, 10);
  EXPECT_DOUBLE_EQ(n.mean, 0.2);

  // A rank with no busy span is idle the whole window.
  const BubbleStats idle = compute_bubble({{make_span("F0", "forward", 0, 8)}, {}});
  EXPECT_DOUBLE_EQ(idle.per_rank[1], 1.0);
  EXPECT_DOUBLE_EQ(idle.mean, 0.5);

  // No busy span anywhere: an empty window and zero shares.
  const BubbleStats none = compute_bubble({{make_span("optimizer", "optimizer", 0, 8)}, {}});
  EXPECT_EQ(none.window_us, 0);
  EXPECT_EQ(none.per_rank, (std::vector<double>{0.0, 0.0}));
  EXPECT_EQ(none.mean, 0.0);
  EXPECT_EQ(compute_bubble({}).per_rank.size(), 0u);
}

}  // namespace
}  // namespace tessera::engine
