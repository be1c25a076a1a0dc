#include "parallel/pp/schedule.h"

#include <algorithm>
#include <set>
#include <utility>

#include <fmt/format.h>

#include "runtime/core/error.h"

namespace tessera::parallel::pp {
namespace {

void check_shape(int stages, int micro_batches, int chunks = 1) {
  TS_CHECK(stages >= 1, "a schedule needs at least one stage, got {}", stages);
  TS_CHECK(micro_batches >= 1, "a schedule needs at least one micro-batch, got {}", micro_batches);
  TS_CHECK(chunks >= 1, "a schedule needs at least one model chunk per stage, got {}", chunks);
}

// Where a (stage, chunk) sits in the chain of virtual stages.
struct Place {
  bool first;  // virtual stage 0: reads the tokens, receives no activation
  bool last;   // the last virtual stage: computes the loss, receives no gradient
};
Place place(int stage, int chunk, int stages, int chunks) {
  return {stage == 0 && chunk == 0, stage == stages - 1 && chunk == chunks - 1};
}

// A forward of micro-batch m on (stage, chunk) with its transfers: receive (not on the first
// virtual stage), forward, send (not on the last).
void add_forward(StageProgram& p, Place at, int chunk, int m) {
  if (!at.first) p.push_back({StepKind::RecvActivation, m, chunk});
  p.push_back({StepKind::Forward, m, chunk});
  if (!at.last) p.push_back({StepKind::SendActivation, m, chunk});
}

void add_backward(StageProgram& p, Place at, int chunk, int m) {
  if (!at.last) p.push_back({StepKind::RecvGrad, m, chunk});
  p.push_back({StepKind::Backward, m, chunk});
  if (!at.first) p.push_back({StepKind::SendGrad, m, chunk});
}

void add_forward(StageProgram& p, int stage, int stages, int m) {
  add_forward(p, place(stage, 0, stages, 1), 0, m);
}
void add_backward(StageProgram& p, int stage, int stages, int m) {
  add_backward(p, place(stage, 0, stages, 1), 0, m);
}

void add_tail(StageProgram& p) {
  p.push_back({StepKind::ReduceGrads, -1});
  p.push_back({StepKind::OptimizerStep, -1});
}

const char* short_name(StepKind k) {
  switch (k) {
    case StepKind::Forward: return "F";
    case StepKind::Backward: return "B";
    case StepKind::RecvActivation: return "rA";
    case StepKind::SendActivation: return "sA";
    case StepKind::RecvGrad: return "rG";
    case StepKind::SendGrad: return "sG";
    case StepKind::ReduceGrads: return "R";
    case StepKind::OptimizerStep: return "O";
  }
  return "?";
}

bool is_tail(StepKind k) { return k == StepKind::ReduceGrads || k == StepKind::OptimizerStep; }

}  // namespace

std::string step_name(const Step& s, int chunks) {
  if (s.micro_batch < 0) return short_name(s.kind);
  std::string name = fmt::format("{}{}", short_name(s.kind), s.micro_batch);
  if (chunks > 1) {
    if (chunks <= 26 && s.chunk >= 0 && s.chunk < 26) {
      name += static_cast<char>('a' + s.chunk);
    } else {
      name += fmt::format(".{}", s.chunk);
    }
  }
  return name;
}

Schedule one_stage(int micro_batches) {
  check_shape(1, micro_batches);
  Schedule s{"one-stage", 1, micro_batches, {StageProgram{}}};
  for (int m = 0; m < micro_batches; ++m) {
    add_forward(s.programs[0], 0, 1, m);
    add_backward(s.programs[0], 0, 1, m);
  }
  add_tail(s.programs[0]);
  return s;
}

Schedule gpipe(int stages, int micro_batches) {
  check_shape(stages, micro_batches);
  if (stages == 1) return one_stage(micro_batches);
  Schedule s{"gpipe", stages, micro_batches, std::vector<StageProgram>(stages)};
  for (int st = 0; st < stages; ++st) {
    for (int m = 0; m < micro_batches; ++m) add_forward(s.programs[st], st, stages, m);
    // Backwards in reverse micro-batch order, as GPipe frees the newest activations first.
    for (int m = micro_batches - 1; m >= 0; --m) add_backward(s.programs[st], st, stages, m);
    add_tail(s.programs[st]);
  }
  return s;
}

Schedule one_f_one_b(int stages, int micro_batches) {
  check_shape(stages, micro_batches);
  if (stages == 1) return one_stage(micro_batches);
  Schedule s{"1f1b", stages, micro_batches, std::vector<StageProgram>(stages)};
  for (int st = 0; st < stages; ++st) {
    StageProgram& p = s.programs[st];
    const int warmup = std::min(stages - 1 - st, micro_batches);
    int next_forward = 0, next_backward = 0;
    for (; next_forward < warmup; ++next_forward) add_forward(p, st, stages, next_forward);
    // Steady state: one forward, one backward.
    while (next_forward < micro_batches) {
      add_forward(p, st, stages, next_forward++);
      add_backward(p, st, stages, next_backward++);
    }
    // Cool-down: the warm-up's backwards.
    while (next_backward < micro_batches) add_backward(p, st, stages, next_backward++);
    add_tail(p);
  }
  return s;
}

int interleaved_warmup(int stages, int micro_batches, int chunks, int stage) {
  const int total = micro_batches * chunks;
  // Megatron runs every forward first when there are exactly p micro-batches.
  if (micro_batches == stages) return total;
  // (v - 1) p forwards fill every chunk but the last on all ranks; the 2 (p - s - 1) more let
  // the later ranks' first backwards come back to stage s just in time.
  return std::min((stages - stage - 1) * 2 + (chunks - 1) * stages, total);
}

Schedule interleaved_one_f_one_b(int stages, int micro_batches, int chunks) {
  check_shape(stages, micro_batches, chunks);
  if (stages == 1) return one_stage(micro_batches);
  if (chunks == 1) return one_f_one_b(stages, micro_batches);
  const int p = stages, m = micro_batches, v = chunks;
  if (m % p != 0) {
    const int below = m / p * p, above = below + p;
    TS_THROW(InvalidArgument,
             "the interleaved schedule needs the micro-batches ({}) to be a multiple of "
             "pipeline_model_parallel_size ({}), virtual size {}: use a multiple of {} "
             "micro-batches (gradient_accumulation_steps), e.g. {}",
             m, p, v, p,
             below > 0 ? fmt::format("{} or {}", below, above) : fmt::format("{}", above));
  }
  Schedule s{"interleaved", p, m, std::vector<StageProgram>(p), v};
  const int total = m * v;
  // A rank's k-th forward runs p micro-batches through chunk 0, the same p through chunk 1, ...,
  // then the next p micro-batches; its k-th backward walks the chunks in reverse.
  auto micro_batch = [&](int k) { return k / (p * v) * p + k % p; };
  for (int st = 0; st < p; ++st) {
    StageProgram& prog = s.programs[st];
    auto forward = [&](int k) {
      const int c = k / p % v;
      add_forward(prog, place(st, c, p, v), c, micro_batch(k));
    };
    auto backward = [&](int k) {
      const int c = v - 1 - k / p % v;
      add_backward(prog, place(st, c, p, v), c, micro_batch(k));
    };
    const int warmup = interleaved_warmup(p, m, v, st);
    for (int k = 0; k < warmup; ++k) forward(k);
    for (int k = 0; k < total - warmup; ++k) {  // steady 1F1B
      forward(warmup + k);
      backward(k);
    }
    for (int k = total - warmup; k < total; ++k) backward(k);  // cool-down
    add_tail(prog);
  }
  return s;
}

Schedule make_schedule(const std::string& name, int stages, int micro_batches, int chunks) {
  check_shape(stages, micro_batches, chunks);
  TS_CHECK(name == "gpipe" || name == "1f1b" || name == "interleaved",
           "unknown pipeline schedule '{}': use gpipe, 1f1b or interleaved", name);
  TS_CHECK(chunks == 1 || name == "interleaved",
           "the {} schedule has one model chunk per stage, got {} "
           "(virtual_pipeline_model_parallel_size): use the interleaved schedule or 1 chunk",
           name, chunks);
  if (stages == 1) return one_stage(micro_batches);
  if (name == "gpipe") return gpipe(stages, micro_batches);
  if (name == "1f1b") return one_f_one_b(stages, micro_batches);
  return interleaved_one_f_one_b(stages, micro_batches, chunks);
}

std::vector<int> assign_slots(const StageProgram& program) {
  std::vector<int> slots(program.size(), -1);
  struct Store {
    std::set<int> free_slots;
    int next_new = 0;
  };
  std::vector<Store> stores;
  std::vector<std::pair<std::pair<int, int>, int>> held;  // ((chunk, micro-batch), slot)
  for (size_t i = 0; i < program.size(); ++i) {
    const Step& s = program[i];
    if (s.kind != StepKind::Forward && s.kind != StepKind::Backward) continue;
    TS_CHECK(s.chunk >= 0, "step {} runs chunk {}", i, s.chunk);
    if (static_cast<int>(stores.size()) <= s.chunk) stores.resize(s.chunk + 1);
    Store& store = stores[s.chunk];
    const std::pair<int, int> key{s.chunk, s.micro_batch};
    if (s.kind == StepKind::Forward) {
      int slot = store.next_new;
      if (!store.free_slots.empty()) {
        slot = *store.free_slots.begin();
        store.free_slots.erase(store.free_slots.begin());
      } else {
        ++store.next_new;
      }
      held.emplace_back(key, slot);
      slots[i] = slot;
    } else {
      auto it =
          std::find_if(held.begin(), held.end(), [&](const auto& h) { return h.first == key; });
      TS_CHECK(it != held.end(), "backward of micro-batch {} (chunk {}) before its forward",
               s.micro_batch, s.chunk);
      slots[i] = it->second;
      store.free_slots.insert(it->second);
      held.erase(it);
    }
  }
  return slots;
}

int slots_needed(const StageProgram& program) {
  int live = 0, most = 0;
  for (const Step& s : program) {
    if (s.kind == StepKind::Forward) most = std::max(most, ++live);
    if (s.kind == StepKind::Backward) --live;
  }
  return most;
}

int slots_needed(const StageProgram& program, int chunk) {
  const std::vector<int> slots = assign_slots(program);
  int most = 0;
  for (size_t i = 0; i < program.size(); ++i) {
    if (program[i].chunk == chunk) most = std::max(most, slots[i] + 1);
  }
  return most;
}

void validate(const Schedule& schedule) {
  const int S = schedule.stages, M = schedule.micro_batches, V = schedule.chunks;
  check_shape(S, M, V);
  TS_CHECK(static_cast<int>(schedule.programs.size()) == S,
           "schedule '{}' has {} stage programs for {} stages", schedule.name,
           schedule.programs.size(), S);
  for (int st = 0; st < S; ++st) {
    const StageProgram& p = schedule.programs[st];
    auto where = [&](size_t i) {
      return fmt::format("schedule '{}', stage {}, step {} ({})", schedule.name, st, i,
                         i < p.size() ? step_name(p[i], V) : "end");
    };
    // [chunk][micro-batch]
    std::vector<std::vector<int>> forwarded(V, std::vector<int>(M, 0)), backwarded = forwarded;
    for (size_t i = 0; i < p.size(); ++i) {
      const Step& s = p[i];
      const bool tail = is_tail(s.kind);
      TS_CHECK(tail == (s.micro_batch < 0), "{}: micro-batch {} is out of place", where(i),
               s.micro_batch);
      TS_CHECK(s.micro_batch < M, "{}: micro-batch {} of {}", where(i), s.micro_batch, M);
      TS_CHECK(s.chunk >= 0 && s.chunk < V && (!tail || s.chunk == 0),
               "{}: chunk {} of {} is out of place", where(i), s.chunk, V);
      if (tail) {
        if (s.kind == StepKind::ReduceGrads) {
          TS_CHECK(i + 2 == p.size(), "{}: ReduceGrads is the second-last step", where(i));
        } else {
          TS_CHECK(i + 1 == p.size() && i > 0 && p[i - 1].kind == StepKind::ReduceGrads,
                   "{}: OptimizerStep is the last step, after ReduceGrads", where(i));
        }
        continue;
      }
      const Place at = place(st, s.chunk, S, V);
      // The step beside this one, if it has kind k and the same micro-batch; its chunk must
      // match too, which is checked separately to name that rule.
      auto neighbour = [&](size_t j, StepKind k) -> const Step* {
        return j < p.size() && p[j].kind == k && p[j].micro_batch == s.micro_batch ? &p[j]
                                                                                   : nullptr;
      };
      auto next_is = [&](StepKind k) { return neighbour(i + 1, k); };
      auto prev_is = [&](StepKind k) { return i > 0 ? neighbour(i - 1, k) : nullptr; };
      auto same_chunk = [&](const Step* other, const char* what) {
        TS_CHECK(other->chunk == s.chunk, "{}: {} runs chunk {}, not this step's chunk {}",
                 where(i), what, other->chunk, s.chunk);
      };
      int& f = forwarded[s.chunk][s.micro_batch];
      int& b = backwarded[s.chunk][s.micro_batch];
      switch (s.kind) {
        case StepKind::Forward:
          TS_CHECK(f++ == 0, "{}: forwarded twice", where(i));
          TS_CHECK(at.first || prev_is(StepKind::RecvActivation),
                   "{}: a forward off the first virtual stage follows its activation's receive",
                   where(i));
          TS_CHECK(at.last || next_is(StepKind::SendActivation),
                   "{}: a forward off the last virtual stage is followed by its activation's send",
                   where(i));
          break;
        case StepKind::Backward:
          TS_CHECK(f == 1, "{}: backward before forward", where(i));
          TS_CHECK(b++ == 0, "{}: backwarded twice", where(i));
          TS_CHECK(at.last || prev_is(StepKind::RecvGrad),
                   "{}: a backward off the last virtual stage follows its gradient's receive",
                   where(i));
          TS_CHECK(at.first || next_is(StepKind::SendGrad),
                   "{}: a backward off the first virtual stage is followed by its gradient's send",
                   where(i));
          break;
        case StepKind::RecvActivation:
          TS_CHECK(!at.first && next_is(StepKind::Forward), "{}: stray activation receive",
                   where(i));
          same_chunk(next_is(StepKind::Forward), "the forward after an activation receive");
          break;
        case StepKind::SendActivation:
          TS_CHECK(!at.last && prev_is(StepKind::Forward), "{}: stray activation send", where(i));
          same_chunk(prev_is(StepKind::Forward), "the forward before an activation send");
          break;
        case StepKind::RecvGrad:
          TS_CHECK(!at.last && next_is(StepKind::Backward), "{}: stray gradient receive", where(i));
          same_chunk(next_is(StepKind::Backward), "the backward after a gradient receive");
          break;
        case StepKind::SendGrad:
          TS_CHECK(!at.first && prev_is(StepKind::Backward), "{}: stray gradient send", where(i));
          same_chunk(prev_is(StepKind::Backward), "the backward before a gradient send");
          break;
        case StepKind::ReduceGrads:
        case StepKind::OptimizerStep:
          break;  // handled above
      }
    }
    TS_CHECK(!p.empty() && p.back().kind == StepKind::OptimizerStep,
             "{}: the program must end with ReduceGrads, OptimizerStep", where(p.size()));
    for (int c = 0; c < V; ++c) {
      for (int m = 0; m < M; ++m) {
        if (forwarded[c][m] == 1 && backwarded[c][m] == 1) continue;
        TS_THROW(InvalidArgument,
                 "schedule '{}', stage {}{}: micro-batch {} is forwarded {} and backwarded {} "
                 "time(s), not once each",
                 schedule.name, st, V > 1 ? fmt::format(", chunk {}", c) : "", m, forwarded[c][m],
                 backwarded[c][m]);
      }
    }
  }
  (void)simulate(schedule);  // throws on a deadlock
}

Timeline simulate(const Schedule& schedule, int forward_cost, int backward_cost) {
  const int S = schedule.stages, M = schedule.micro_batches, V = schedule.chunks;
  check_shape(S, M, V);
  TS_CHECK(static_cast<int>(schedule.programs.size()) == S,
           "schedule '{}' has {} stage programs for {} stages", schedule.name,
           schedule.programs.size(), S);
  std::vector<size_t> pc(S, 0);
  std::vector<int> clock(S, 0), busy(S, 0);
  Timeline t;
  t.steps.resize(S);
  // When each virtual stage's send of a micro-batch completed (buffered: a send never waits
  // for its receive); -1 until then.
  std::vector<std::vector<int>> act_sent(S * V, std::vector<int>(M, -1)), grad_sent = act_sent;
  bool progress = true;
  while (progress) {
    progress = false;
    for (int st = 0; st < S; ++st) {
      const StageProgram& p = schedule.programs[st];
      while (pc[st] < p.size()) {
        const Step& s = p[pc[st]];
        const int m = s.micro_batch;
        const bool moves = !is_tail(s.kind);
        TS_CHECK(!moves || (m >= 0 && m < M && s.chunk >= 0 && s.chunk < V),
                 "schedule '{}', stage {}, step {}: micro-batch {} chunk {} is out of range",
                 schedule.name, st, pc[st], m, s.chunk);
        const int k = virtual_stage(st, s.chunk, S);
        if (s.kind == StepKind::RecvActivation || s.kind == StepKind::RecvGrad) {
          const bool act = s.kind == StepKind::RecvActivation;
          const int from = act ? k - 1 : k + 1;
          TS_CHECK(from >= 0 && from < S * V,
                   "schedule '{}', stage {}, step {} ({}): no virtual stage {} to receive from",
                   schedule.name, st, pc[st], step_name(s, V), from);
          const int at = (act ? act_sent : grad_sent)[from][m];
          if (at < 0) break;  // not sent yet: another stage must move first
          clock[st] = std::max(clock[st], at);
        } else if (s.kind == StepKind::Forward || s.kind == StepKind::Backward) {
          const int cost = s.kind == StepKind::Forward ? forward_cost : backward_cost;
          t.steps[st].push_back({s, clock[st], cost});
          clock[st] += cost;
          busy[st] += cost;
        } else if (s.kind == StepKind::SendActivation) {
          act_sent[k][m] = clock[st];
        } else if (s.kind == StepKind::SendGrad) {
          grad_sent[k][m] = clock[st];
        }
        ++pc[st];
        progress = true;
      }
    }
  }
  for (int st = 0; st < S; ++st) {
    const StageProgram& p = schedule.programs[st];
    TS_CHECK(pc[st] == p.size(), "schedule '{}' deadlocks: stage {} waits at step {} ({})",
             schedule.name, st, pc[st], step_name(p[pc[st]], V));
  }
  t.makespan = *std::max_element(clock.begin(), clock.end());
  int64_t idle = 0, work = 0;
  for (int st = 0; st < S; ++st) {
    idle += t.makespan - busy[st];
    work += busy[st];
  }
  t.bubble_fraction = t.makespan > 0 ? static_cast<double>(idle) / (int64_t{t.makespan} * S) : 0.0;
  t.bubble_ratio = work > 0 ? static_cast<double>(idle) / work : 0.0;
  return t;
}

std::string to_string(const Schedule& schedule) {
  std::string out;
  for (int st = 0; st < schedule.stages; ++st) {
    out += fmt::format("stage {}:", st);
    for (const Step& s : schedule.programs[st]) {
      out += ' ';
      out += step_name(s, schedule.chunks);
    }
    out += "\n";
  }
  return out;
}

}  // namespace tessera::parallel::pp
