// `tessera schedule`: a pipeline schedule (parallel/pp/schedule.h) drawn for a person: each
// rank's forwards and backwards on simulate()'s unit-time model, the programs as the engine
// runs them, the simulated bubble beside Megatron's formulas, and the activations each rank
// holds. Everything printed comes from the schedule's data, the same the trainer executes.
#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "launch/commands.h"
#include "parallel/pp/schedule.h"
#include "runtime/core/error.h"

namespace tessera::launch {
namespace pp = parallel::pp;
namespace {

constexpr int kForwardCost = 1, kBackwardCost = 2;

std::string resolve_name(const ScheduleOptions& o) {
  if (o.schedule.empty()) return o.virtual_size > 1 ? "interleaved" : "1f1b";
  TS_CHECK(o.schedule == "gpipe" || o.schedule == "1f1b" || o.schedule == "interleaved",
           "--schedule {} is unknown: use 1f1b, gpipe or interleaved", o.schedule);
  TS_CHECK(o.virtual_size == 1 || o.schedule == "interleaved",
           "--schedule {} runs one model chunk per rank, --virtual {} needs --schedule "
           "interleaved (or leave --schedule out)",
           o.schedule, o.virtual_size);
  return o.schedule;
}

// The ranks' rows: one cell of `cell` characters per time unit; a step's label in its first
// unit, "--" in the others, "." where the rank idles. Wrapped into blocks of whole units.
std::string draw_timeline(const pp::Schedule& s, const pp::Timeline& t, int width) {
  size_t label = 1;
  for (const auto& stage : t.steps) {
    for (const pp::TimedStep& x : stage) {
      label = std::max(label, pp::step_name(x.step, s.chunks).size());
    }
  }
  const int cell = static_cast<int>(label) + 1;
  const std::string prefix_fmt =
      fmt::format("rank {{:<{}}} | ", fmt::format("{}", s.stages - 1).size());
  const size_t prefix = fmt::format(fmt::runtime(prefix_fmt), 0).size();
  std::vector<std::vector<std::string>> rows(s.stages, std::vector<std::string>(t.makespan, "."));
  for (int st = 0; st < s.stages; ++st) {
    for (const pp::TimedStep& x : t.steps[st]) {
      rows[st][x.start] = pp::step_name(x.step, s.chunks);
      for (int u = 1; u < x.duration; ++u) rows[st][x.start + u] = std::string(cell - 1, '-');
    }
  }
  int per_block = t.makespan;
  if (width > 0) {
    // Whole multiples of 5 units, so the time ticks stay put from block to block.
    const int fit = (width - static_cast<int>(prefix)) / cell;
    const int most = std::max(5, fit / 5 * 5);
    // As many blocks as needed, evened out so the last is not a stub.
    const int blocks = (t.makespan + most - 1) / most;
    per_block = std::max(5, ((t.makespan + blocks - 1) / blocks + 4) / 5 * 5);
  }
  std::string out;
  for (int from = 0; from < t.makespan; from += per_block) {
    const int to = std::min(t.makespan, from + per_block);
    std::string ticks(prefix + static_cast<size_t>(to - from) * cell, ' ');
    ticks.replace(0, 4, "time");
    for (int u = from; u < to; ++u) {
      if (u % 5 != 0) continue;
      const std::string n = fmt::format("{}", u);
      const size_t at = prefix + static_cast<size_t>(u - from) * cell;
      if (at + n.size() <= ticks.size()) ticks.replace(at, n.size(), n);
    }
    ticks.erase(ticks.find_last_not_of(' ') + 1);
    if (from > 0) out += "\n";
    out += ticks + "\n";
    for (int st = 0; st < s.stages; ++st) {
      std::string line = fmt::format(fmt::runtime(prefix_fmt), st);
      for (int u = from; u < to; ++u) line += fmt::format("{:<{}}", rows[st][u], cell);
      line.erase(line.find_last_not_of(' ') + 1);
      out += line + "\n";
    }
  }
  return out;
}

std::string chunk_letter(int chunk, int chunks) {
  return pp::step_name({pp::StepKind::Forward, 0, chunk}, chunks).substr(2);
}

}  // namespace

std::string format_schedule(const ScheduleOptions& o) {
  TS_CHECK(o.pp >= 1, "--pp must be >= 1 (pipeline ranks), got {}", o.pp);
  TS_CHECK(o.micro >= 1, "--micro must be >= 1 (micro-batches per step), got {}", o.micro);
  TS_CHECK(o.virtual_size >= 1, "--virtual must be >= 1 (model chunks per rank), got {}",
           o.virtual_size);
  TS_CHECK(o.width >= 0, "--width must be >= 0 (0: no wrapping), got {}", o.width);
  const std::string name = resolve_name(o);
  const pp::Schedule s = pp::make_schedule(name, o.pp, o.micro, o.virtual_size);
  pp::validate(s);
  const pp::Timeline t = pp::simulate(s, kForwardCost, kBackwardCost);
  const int p = s.stages, m = s.micro_batches, v = s.chunks;

  std::string out = fmt::format("{} schedule: p = {} pipeline rank{}, m = {} micro-batch{}", s.name,
                                p, p == 1 ? "" : "s", m, m == 1 ? "" : "es");
  if (v > 1) {
    out += fmt::format(
        ", v = {} model chunks per rank\n(chunk c of rank s is virtual stage c x {} + s: "
        "activations go rank 0 to {} "
        "through chunk a, then on to chunk b, ...)",
        v, p, p - 1);
  }
  out += "\n";
  if (o.virtual_size > 1 && v == 1) {
    out += fmt::format(
        "(one pipeline rank holds the whole model: --virtual {} has nothing to interleave)\n",
        o.virtual_size);
  }
  if (name == "interleaved" && o.virtual_size == 1) {
    out += "(interleaved with one chunk per rank is 1F1B)\n";
  }
  out +=
      "legend: Fk forward of micro-batch k (1 time unit), Bk its backward (2 units), -- the "
      "backward "
      "continuing, . idle";
  if (v > 1) {
    out += fmt::format(
        "\n        the letter is the model chunk (F3a: chunk 0 of micro-batch 3, F3{}: chunk {}); "
        "a unit is one chunk's forward",
        chunk_letter(v - 1, v), v - 1);
  }
  out += "\n\n" + draw_timeline(s, t, o.width);

  out +=
      "\nsteps per rank (rA/sA receive/send an activation, rG/sG a gradient, R reduce the "
      "gradients, O optimizer step):\n";
  std::string programs = pp::to_string(s);
  for (size_t at = 0; (at = programs.find("stage ", at)) != std::string::npos;) {
    programs.replace(at, 6, "rank ");
  }
  out += programs;

  out += fmt::format("\nbubble, simulated ({} units in all, each rank busy {}):\n", t.makespan,
                     3 * m * v);
  out += fmt::format("  bubble / ideal time  {:.4f}   Megatron's (p-1)/m = {}/{} = {:.4f}",
                     t.bubble_ratio, p - 1, m, static_cast<double>(p - 1) / m);
  if (v > 1) {
    out += fmt::format(", interleaved (p-1)/(v m) = {}/{} = {:.4f}", p - 1, v * m,
                       static_cast<double>(p - 1) / (v * m));
  }
  out += fmt::format("\n  idle share of time   {:.4f}   (p-1)/({}m+p-1) = {}/{} = {:.4f}\n",
                     t.bubble_fraction, v > 1 ? "v " : "", p - 1, v * m + p - 1,
                     static_cast<double>(p - 1) / (v * m + p - 1));

  out += "\nactivations in flight per rank (micro-batches forwarded and not yet backwarded";
  out +=
      v > 1 ? " through one chunk,\neach 1/v of the rank's layers, so /v gives whole micro-batches "
              "of the rank's layers):\n"
            : "):\n";
  for (int st = 0; st < p; ++st) {
    const pp::StageProgram& prog = s.programs[st];
    out += fmt::format("  rank {}: {}", st, pp::slots_needed(prog));
    if (v > 1) {
      std::vector<std::string> stores;
      for (int c = 0; c < v; ++c) {
        stores.push_back(fmt::format("{} {}", chunk_letter(c, v), pp::slots_needed(prog, c)));
      }
      out += fmt::format(" = {:.2f} whole (slots per chunk store: {})",
                         static_cast<double>(pp::slots_needed(prog)) / v, fmt::join(stores, ", "));
    }
    out += "\n";
  }
  return out;
}

int run_schedule(const ScheduleOptions& o) {
  std::cout << format_schedule(o) << std::flush;
  return 0;
}

}  // namespace tessera::launch
