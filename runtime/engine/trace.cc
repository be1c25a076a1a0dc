#include "runtime/engine/trace.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <utility>

#include "parallel/comm/process_group.h"
#include "runtime/core/error.h"
#include "runtime/core/temp_path.h"

namespace tessera::engine {
namespace {

using json = nlohmann::json;

// Tracks (tids) of a rank's process in the viewer; see trace.h.
struct Track {
  int tid;
  const char* name;
};
constexpr Track kComputeTrack{0, "compute"};
constexpr Track kSendTrack{1, "send"};
constexpr Track kRecvTrack{2, "recv"};
constexpr Track kCollectiveTrack{3, "collective"};
constexpr Track kTracks[] = {kComputeTrack, kSendTrack, kRecvTrack, kCollectiveTrack};

const Track& track_of(std::string_view category) {
  if (category == kTraceSend) return kSendTrack;
  if (category == kTraceRecv) return kRecvTrack;
  if (category == kTraceCollective) return kCollectiveTrack;
  return kComputeTrack;
}

// Labels and span names come from the engine, but never let a stray byte make dump() throw.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string label_or_default(const std::vector<std::string>& labels, size_t rank) {
  if (rank < labels.size() && !labels[rank].empty()) return labels[rank];
  return "rank " + std::to_string(rank);
}

json metadata(const char* name, int pid, int tid, json args) {
  return {{"ph", "M"}, {"name", name}, {"pid", pid}, {"tid", tid}, {"args", std::move(args)}};
}

json complete_event(const TraceSpan& s, int pid) {
  json args = json::object();
  if (s.micro_batch >= 0) args["micro_batch"] = s.micro_batch;
  if (s.chunk >= 0) args["chunk"] = s.chunk;
  return {{"ph", "X"},
          {"name", s.name},
          {"cat", s.category},
          {"ts", s.begin_us},
          {"dur", s.duration_us},
          {"pid", pid},
          {"tid", track_of(s.category).tid},
          {"args", std::move(args)}};
}

// The compact form one rank's spans travel in: [name, category, begin, duration, mb, chunk].
json spans_to_wire(const std::vector<TraceSpan>& spans) {
  json out = json::array();
  for (const TraceSpan& s : spans) {
    out.push_back(
        json::array({s.name, s.category, s.begin_us, s.duration_us, s.micro_batch, s.chunk}));
  }
  return out;
}

std::vector<TraceSpan> spans_from_wire(const json& wire) {
  std::vector<TraceSpan> out;
  out.reserve(wire.size());
  for (const json& a : wire) {
    out.push_back(TraceSpan{a.at(0).get<std::string>(), a.at(1).get<std::string>(),
                            a.at(2).get<int64_t>(), a.at(3).get<int64_t>(), a.at(4).get<int>(),
                            a.at(5).get<int>()});
  }
  return out;
}

int64_t json_time(const json& v) {
  if (v.is_number_integer()) return v.get<int64_t>();
  return static_cast<int64_t>(std::llround(v.get<double>()));
}

void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = temp_sibling(path);
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  TS_CHECK(f != nullptr,
           "cannot write the trace file '{}': {} (check that its folder exists "
           "and is writable)",
           path, std::strerror(errno));
  bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const std::string write_error = ok ? "" : std::strerror(errno);
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    const std::string why = write_error.empty() ? std::strerror(errno) : write_error;
    std::remove(tmp.c_str());
    TS_THROW(InvalidArgument, "writing the trace file '{}' failed: {} (disk full?)", path, why);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    TS_THROW(InvalidArgument, "cannot move the trace file into place at '{}': {}", path, why);
  }
}

}  // namespace

// ---- TraceRecorder -------------------------------------------------------------------------

TraceRecorder::TraceRecorder(Clock::time_point origin) : origin_(origin) {}

void TraceRecorder::sync_origin(parallel::ProcessGroup* world) {
  if (world != nullptr && world->size() > 1) world->barrier()->wait();
  origin_ = Clock::now();
}

int64_t TraceRecorder::to_us(Clock::time_point t) const {
  // floor, not truncation: a time before the origin stays ordered with the ones after it.
  return std::chrono::floor<std::chrono::microseconds>(t - origin_).count();
}

TraceRecorder::Scope TraceRecorder::span(std::string_view name, std::string_view category,
                                         int micro_batch, int chunk) {
  if (!enabled_) return Scope();
  return Scope(this, name, category, micro_batch, chunk);
}

void TraceRecorder::add(TraceSpan span) {
  if (enabled_) spans_.push_back(std::move(span));
}

TraceRecorder::Scope::Scope(TraceRecorder* recorder, std::string_view name,
                            std::string_view category, int micro_batch, int chunk)
    : recorder_(recorder),
      name_(name),
      category_(category),
      micro_batch_(micro_batch),
      chunk_(chunk) {
  begin_ = Clock::now();  // last, so the span does not include building the strings
}

TraceRecorder::Scope::Scope(Scope&& other) noexcept
    : recorder_(std::exchange(other.recorder_, nullptr)),
      begin_(other.begin_),
      name_(std::move(other.name_)),
      category_(std::move(other.category_)),
      micro_batch_(other.micro_batch_),
      chunk_(other.chunk_) {}

TraceRecorder::Scope& TraceRecorder::Scope::operator=(Scope&& other) noexcept {
  if (this != &other) {
    end();
    recorder_ = std::exchange(other.recorder_, nullptr);
    begin_ = other.begin_;
    name_ = std::move(other.name_);
    category_ = std::move(other.category_);
    micro_batch_ = other.micro_batch_;
    chunk_ = other.chunk_;
  }
  return *this;
}

void TraceRecorder::Scope::end() {
  if (recorder_ == nullptr) return;
  const Clock::time_point end_time = Clock::now();
  TraceRecorder* r = std::exchange(recorder_, nullptr);
  // Both ends floored on the same grid, so a nested span's [begin, end] stays inside its
  // parent's in whole microseconds too.
  const int64_t begin_us = r->to_us(begin_);
  const int64_t end_us = r->to_us(end_time);
  r->spans_.push_back(TraceSpan{std::move(name_), std::move(category_), begin_us, end_us - begin_us,
                                micro_batch_, chunk_});
}

// ---- The file ------------------------------------------------------------------------------

std::string chrome_trace_json(const std::vector<std::vector<TraceSpan>>& per_rank,
                              const std::vector<std::string>& labels) {
  std::vector<json> events;
  for (size_t r = 0; r < per_rank.size(); ++r) {
    const int pid = static_cast<int>(r);
    events.push_back(metadata("process_name", pid, 0, {{"name", label_or_default(labels, r)}}));
    events.push_back(metadata("process_sort_index", pid, 0, {{"sort_index", pid}}));
    bool used[std::size(kTracks)] = {};
    for (const TraceSpan& s : per_rank[r]) used[track_of(s.category).tid] = true;
    for (const Track& t : kTracks) {
      if (!used[t.tid]) continue;
      events.push_back(metadata("thread_name", pid, t.tid, {{"name", t.name}}));
      events.push_back(metadata("thread_sort_index", pid, t.tid, {{"sort_index", t.tid}}));
    }
    for (const TraceSpan& s : per_rank[r]) events.push_back(complete_event(s, pid));
  }

  json other = {{"producer", "tessera"},
                {"world_size", per_rank.size()},
                {"clock",
                 "microseconds since each rank's origin: a barrier on the world, then "
                 "steady_clock now (TraceRecorder::sync_origin)"}};
  const BubbleStats bubble = compute_bubble(per_rank);
  if (bubble.window_us > 0) {
    other["bubble_mean"] = bubble.mean;
    other["bubble_window_us"] = bubble.window_us;
  }

  // One event a line: the viewers do not care, and a reader (or grep) can follow it.
  std::string out = "{\"traceEvents\":[\n";
  for (size_t i = 0; i < events.size(); ++i) {
    out += dump(events[i]);
    out += i + 1 < events.size() ? ",\n" : "\n";
  }
  out += "],\n\"displayTimeUnit\":\"ms\",\n\"otherData\":";
  out += dump(other);
  out += "}\n";
  return out;
}

std::vector<std::vector<TraceSpan>> read_chrome_trace(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TS_CHECK(in.good(), "cannot read the trace file '{}': {}", path, std::strerror(errno));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::vector<TraceSpan>> per_rank;
  try {
    const json doc = json::parse(text);
    TS_CHECK(doc.is_object() && doc.contains("traceEvents") && doc["traceEvents"].is_array(),
             "'{}' is not a Chrome trace: no traceEvents array", path);
    if (doc.contains("otherData") && doc["otherData"].contains("world_size")) {
      per_rank.resize(doc["otherData"]["world_size"].get<size_t>());
    }
    for (const json& ev : doc["traceEvents"]) {
      const std::string ph = ev.value("ph", "");
      if (ph != "X" && ph != "M") continue;
      const auto pid = ev.at("pid").get<size_t>();
      if (pid >= per_rank.size()) per_rank.resize(pid + 1);
      if (ph != "X") continue;
      TraceSpan s;
      s.name = ev.at("name").get<std::string>();
      s.category = ev.value("cat", "");
      s.begin_us = json_time(ev.at("ts"));
      s.duration_us = json_time(ev.at("dur"));
      if (ev.contains("args")) {
        s.micro_batch = ev["args"].value("micro_batch", -1);
        s.chunk = ev["args"].value("chunk", -1);
      }
      per_rank[pid].push_back(std::move(s));
    }
  } catch (const json::exception& e) {
    TS_THROW(InvalidArgument, "'{}' is not a Chrome trace: {}", path, e.what());
  }
  return per_rank;
}

void write_chrome_trace(const std::string& path, const TraceRecorder& mine,
                        std::string_view rank_label, parallel::ProcessGroup* world) {
  const int rank = world != nullptr ? world->rank() : 0;
  const int size = world != nullptr ? world->size() : 1;
  std::vector<std::vector<TraceSpan>> per_rank;
  std::vector<std::string> labels;
  std::vector<int32_t> gathered;  // rank 0: every rank's JSON, rank by rank
  std::vector<size_t> gathered_counts;

  if (size == 1) {
    per_rank.push_back(mine.spans());
    labels.emplace_back(rank_label);
  } else {
    // The communicator moves typed elements and has no byte type: carry the JSON text in
    // int32 words, padded with spaces (which the parser skips).
    std::string bytes = dump(json{{"label", rank_label}, {"spans", spans_to_wire(mine.spans())}});
    bytes.resize((bytes.size() + 3) / 4 * 4, ' ');
    TS_CHECK(bytes.size() / 4 <= 0x7fffffffu, "trace {}: rank {}'s {} bytes of spans are too many",
             path, rank, bytes.size());
    const auto words = static_cast<int32_t>(bytes.size() / 4);
    std::vector<int32_t> all_words(size);
    world->all_gather(&words, all_words.data(), 1, DType::I32)->wait();
    std::vector<size_t> counts(all_words.begin(), all_words.end());
    size_t total = 0;
    for (size_t c : counts) total += c;
    std::vector<int32_t> send(static_cast<size_t>(words));
    std::memcpy(send.data(), bytes.data(), bytes.size());
    std::vector<int32_t> recv(total);
    world->all_gather_v(send.data(), recv.data(), counts, DType::I32)->wait();
    if (rank == 0) gathered.swap(recv);
    gathered_counts.swap(counts);
  }

  // Rank 0 decodes and writes, then tells every rank whether it could, so that all of them
  // throw or none does (and no rank is left waiting for a collective rank 0 never joins).
  int32_t ok = 1;
  std::string error;
  if (rank == 0) {
    try {
      const char* at = reinterpret_cast<const char*>(gathered.data());
      for (size_t r = 0; r < gathered_counts.size(); ++r) {
        const json one = json::parse(at, at + gathered_counts[r] * 4);
        at += gathered_counts[r] * 4;
        labels.push_back(one.at("label").get<std::string>());
        per_rank.push_back(spans_from_wire(one.at("spans")));
      }
      write_file_atomically(path, chrome_trace_json(per_rank, labels));
    } catch (const std::exception& e) {
      ok = 0;
      error = e.what();
    }
  }
  if (size > 1) world->broadcast(&ok, 1, DType::I32)->wait();
  if (ok != 0) return;
  if (rank == 0) throw InvalidArgument(error);
  TS_THROW(Error, "rank 0 could not write the trace file '{}' (its error names the cause)", path);
}

// ---- The bubble ----------------------------------------------------------------------------

BubbleStats compute_bubble(const std::vector<std::vector<TraceSpan>>& per_rank,
                           std::span<const std::string> busy_categories) {
  const auto busy = [&](const TraceSpan& s) {
    return std::find(busy_categories.begin(), busy_categories.end(), s.category) !=
           busy_categories.end();
  };
  BubbleStats stats;
  stats.per_rank.assign(per_rank.size(), 0.0);
  int64_t lo = INT64_MAX;
  int64_t hi = INT64_MIN;
  for (const auto& spans : per_rank) {
    for (const TraceSpan& s : spans) {
      if (!busy(s)) continue;
      lo = std::min(lo, s.begin_us);
      hi = std::max(hi, s.begin_us + s.duration_us);
    }
  }
  if (lo >= hi) return stats;  // no busy span (or only empty ones)
  stats.window_us = hi - lo;

  double sum = 0;
  for (size_t r = 0; r < per_rank.size(); ++r) {
    std::vector<std::pair<int64_t, int64_t>> intervals;
    for (const TraceSpan& s : per_rank[r]) {
      if (busy(s) && s.duration_us > 0)
        intervals.emplace_back(s.begin_us, s.begin_us + s.duration_us);
    }
    std::sort(intervals.begin(), intervals.end());
    int64_t covered = 0;
    int64_t run_begin = 0;
    int64_t run_end = INT64_MIN;
    for (const auto& [b, e] : intervals) {
      if (b > run_end) {
        if (run_end != INT64_MIN) covered += run_end - run_begin;
        run_begin = b;
        run_end = e;
      } else {
        run_end = std::max(run_end, e);
      }
    }
    if (run_end != INT64_MIN) covered += run_end - run_begin;
    stats.per_rank[r] = 1.0 - static_cast<double>(covered) / static_cast<double>(stats.window_us);
    sum += stats.per_rank[r];
  }
  stats.mean = per_rank.empty() ? 0.0 : sum / static_cast<double>(per_rank.size());
  return stats;
}

}  // namespace tessera::engine
