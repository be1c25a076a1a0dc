// Chrome-trace recording (`training.trace_file`): each rank's forward, backward, send,
// receive, collective and optimizer spans of one chosen step, gathered to world rank 0 and
// written as one Chrome trace JSON file that Perfetto (ui.perfetto.dev) and chrome://tracing
// open. Also the pipeline bubble of such a trace, and a reader for the files written here.
//
// File format (the Trace Event Format's JSON object form):
//   {"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}
// - one "X" (complete) event per span: name, cat (the span's category), ts and dur in
//   microseconds, pid = world rank, tid = the rank's track (below), args {micro_batch, chunk}
//   holding only the fields that are >= 0;
// - "M" metadata per rank: process_name (the label the rank passed, e.g.
//   "rank 3 (pp 1, tp 0, dp 1)") and process_sort_index (ranks in order), and thread_name /
//   thread_sort_index for every track the rank uses;
// - otherData: producer "tessera", world_size, the clock's description and, when the trace
//   has forward/backward spans, bubble_mean and bubble_window_us (compute_bubble).
// Tracks: tid 0 "compute" (forward, backward, optimizer, idle and any other category),
// tid 1 "send", tid 2 "recv", tid 3 "collective". Asynchronous communication overlaps
// compute, and spans that partially overlap on one track draw wrongly, so each kind of
// communication gets its own row; forward and backward share one, so a rank's row reads as
// the schedule (F0 F1 B0 F2 B1 ...). Spans nest within a track as long as they nest in time.
//
// Clocks: every time is microseconds since the recorder's origin, a steady_clock time point.
// Thread ranks of one process share steady_clock, so passing them the same origin lines
// their spans up exactly. Processes (MPI ranks, possibly on other hosts) do not share a
// clock: TraceRecorder::sync_origin(world) runs a barrier on the world and then sets every
// rank's origin to its own "now", so time 0 is the barrier's exit on every rank. That is
// good to the barrier's exit skew (tens of microseconds over MPI, more across hosts), so a
// send and its receive can look misordered by that much; the engine calls it right before
// the traced step.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::parallel {
class ProcessGroup;
}  // namespace tessera::parallel

namespace tessera::engine {

// The categories the engine records (any other string is allowed and lands on the compute
// track).
inline constexpr std::string_view kTraceForward = "forward";
inline constexpr std::string_view kTraceBackward = "backward";
inline constexpr std::string_view kTraceSend = "send";
inline constexpr std::string_view kTraceRecv = "recv";
inline constexpr std::string_view kTraceCollective = "collective";
inline constexpr std::string_view kTraceOptimizer = "optimizer";
inline constexpr std::string_view kTraceIdle = "idle";

// One complete span ("X" event) on this rank.
struct TraceSpan {
  std::string name;      // "F3", "B3", "send activation 3", "all-reduce grads", "optimizer"
  std::string category;  // "forward", "backward", "send", "recv", "collective", "optimizer", ...
  int64_t begin_us = 0;  // microseconds since the recorder's origin
  int64_t duration_us = 0;
  int micro_batch = -1;  // in args when >= 0
  int chunk = -1;        // model chunk (interleaved schedules), in args when >= 0

  bool operator==(const TraceSpan&) const = default;
};

// One rank's spans. Like a ProcessGroup, a recorder belongs to its rank's thread: record
// from that thread only (a span of work that completes elsewhere, e.g. an async send, is
// measured there and handed over with add()).
class TraceRecorder {
 public:
  using Clock = std::chrono::steady_clock;

  // Starts disabled. Thread ranks of one process should pass the same origin.
  explicit TraceRecorder(Clock::time_point origin = Clock::now());

  // Records only while enabled (the engine enables it for the chosen step). A Scope that
  // began while enabled is recorded even if recording is switched off before it ends.
  void set_enabled(bool on) { enabled_ = on; }
  bool enabled() const { return enabled_; }

  // Collective over `world` (null: just this rank): a barrier, then origin = now on every
  // rank, so that spans of ranks in different processes line up (see the file comment).
  // Spans already recorded keep their times, which were relative to the old origin: call
  // it before recording (or clear()).
  void sync_origin(parallel::ProcessGroup* world);
  Clock::time_point origin() const { return origin_; }
  // Microseconds since the origin (floor), the unit of TraceSpan's times.
  int64_t to_us(Clock::time_point t) const;
  int64_t now_us() const { return to_us(Clock::now()); }

  // RAII span: records [construction, destruction) (or until end()) when the recorder was
  // enabled at construction; otherwise it holds nothing and costs a branch.
  class Scope {
   public:
    Scope() = default;
    Scope(Scope&& other) noexcept;
    Scope& operator=(Scope&& other) noexcept;
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
    ~Scope() { end(); }

    // Ends the span now and records it; later calls (and the destructor) do nothing.
    void end();
    bool active() const { return recorder_ != nullptr; }

   private:
    friend class TraceRecorder;
    Scope(TraceRecorder* recorder, std::string_view name, std::string_view category,
          int micro_batch, int chunk);

    TraceRecorder* recorder_ = nullptr;
    Clock::time_point begin_;
    std::string name_;
    std::string category_;
    int micro_batch_ = -1;
    int chunk_ = -1;
  };

  [[nodiscard]] Scope span(std::string_view name, std::string_view category, int micro_batch = -1,
                           int chunk = -1);
  // Records a span measured by the caller, when enabled (dropped otherwise).
  void add(TraceSpan span);

  // In the order spans ended (a nested span comes before the one around it).
  const std::vector<TraceSpan>& spans() const { return spans_; }
  void clear() { spans_.clear(); }

 private:
  Clock::time_point origin_;
  bool enabled_ = false;
  std::vector<TraceSpan> spans_;
};

// Collective over `world` (null: a world of one rank): every rank's spans and label are
// all-gathered (as JSON bytes, so any backend carries them) and world rank 0 writes the
// Chrome trace to `path` (to a temporary sibling first, renamed into place: never a
// half-written file). An empty label becomes "rank <r>". Either every rank returns or every
// rank throws: if rank 0 cannot write the file (folder missing, not writable, disk full) it
// throws InvalidArgument naming the path and every other rank throws Error naming it too.
void write_chrome_trace(const std::string& path, const TraceRecorder& mine,
                        std::string_view rank_label, parallel::ProcessGroup* world);

// The file's text for spans by world rank (labels[r] names rank r; missing or empty labels
// become "rank <r>"). Events appear rank by rank, each rank's spans in their given order.
std::string chrome_trace_json(const std::vector<std::vector<TraceSpan>>& per_rank,
                              const std::vector<std::string>& labels);

// Reads a file written by write_chrome_trace back into spans by rank (pid), in file order;
// ranks without spans are empty. Throws InvalidArgument naming the path when it cannot be
// read or is not a Chrome trace.
std::vector<std::vector<TraceSpan>> read_chrome_trace(const std::string& path);

inline const std::array<std::string, 2> kBubbleBusyCategories = {"forward", "backward"};

// The pipeline bubble. The window is [earliest begin, latest end] of the busy spans over all
// ranks; each rank's bubble is the share of that window its busy spans (their union, so
// nested spans count once) leave uncovered. Only busy spans set the window, so the
// gradient all-reduce and optimizer after the pipeline do not count as bubble. With no busy
// span anywhere the window is 0 and every share is 0.
struct BubbleStats {
  double mean = 0;               // over ranks
  std::vector<double> per_rank;  // 0..1 each
  int64_t window_us = 0;
};
BubbleStats compute_bubble(const std::vector<std::vector<TraceSpan>>& per_rank,
                           std::span<const std::string> busy_categories = kBubbleBusyCategories);

}  // namespace tessera::engine
