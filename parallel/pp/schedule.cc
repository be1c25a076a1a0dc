#include "parallel/pp/schedule.h"

#include <algorithm>
#include <set>

#include <fmt/format.h>

#include "runtime/core/error.h"

namespace tessera::parallel::pp {
namespace {

void check_shape(int stages, int micro_batches) {
  TS_CHECK(stages >= 1, "a schedule needs at least one stage, got {}", stages);
  TS_CHECK(micro_batches >= 1, "a schedule needs at least one micro-batch, got {}", micro_batches);
}

// A stage's forward of micro-batch m with its transfers: receive (not on the first stage),
// forward, send (not on the last).
void add_forward(StageProgram& p, int stage, int stages, int m) {
  if (stage > 0) p.push_back({StepKind::RecvActivation, m});
  p.push_back({StepKind::Forward, m});
  if (stage < stages - 1) p.push_back({StepKind::SendActivation, m});
}

void add_backward(StageProgram& p, int stage, int stages, int m) {
  if (stage < stages - 1) p.push_back({StepKind::RecvGrad, m});
  p.push_back({StepKind::Backward, m});
  if (stage > 0) p.push_back({StepKind::SendGrad, m});
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

std::string step_name(const Step& s) {
  return s.micro_batch >= 0 ? fmt::format("{}{}", short_name(s.kind), s.micro_batch)
                            : short_name(s.kind);
}

}  // namespace

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

Schedule make_schedule(const std::string& name, int stages, int micro_batches) {
  if (stages == 1) return one_stage(micro_batches);
  if (name == "gpipe") return gpipe(stages, micro_batches);
  if (name == "1f1b") return one_f_one_b(stages, micro_batches);
  TS_THROW(InvalidArgument, "unknown pipeline schedule '{}': use gpipe or 1f1b", name);
}

std::vector<int> assign_slots(const StageProgram& program) {
  std::vector<int> slots(program.size(), -1);
  std::set<int> free_slots;
  int next_new = 0;
  std::vector<std::pair<int, int>> held;  // (micro-batch, slot)
  for (size_t i = 0; i < program.size(); ++i) {
    const Step& s = program[i];
    if (s.kind == StepKind::Forward) {
      int slot = next_new;
      if (!free_slots.empty()) {
        slot = *free_slots.begin();
        free_slots.erase(free_slots.begin());
      } else {
        ++next_new;
      }
      held.emplace_back(s.micro_batch, slot);
      slots[i] = slot;
    } else if (s.kind == StepKind::Backward) {
      auto it = std::find_if(held.begin(), held.end(),
                             [&](const auto& h) { return h.first == s.micro_batch; });
      TS_CHECK(it != held.end(), "backward of micro-batch {} before its forward", s.micro_batch);
      slots[i] = it->second;
      free_slots.insert(it->second);
      held.erase(it);
    }
  }
  return slots;
}

int slots_needed(const StageProgram& program) {
  const std::vector<int> slots = assign_slots(program);
  return 1 + *std::max_element(slots.begin(), slots.end());
}

void validate(const Schedule& schedule) {
  const int S = schedule.stages, M = schedule.micro_batches;
  check_shape(S, M);
  TS_CHECK(static_cast<int>(schedule.programs.size()) == S,
           "schedule '{}' has {} stage programs for {} stages", schedule.name,
           schedule.programs.size(), S);
  for (int st = 0; st < S; ++st) {
    const StageProgram& p = schedule.programs[st];
    auto where = [&](size_t i) {
      return fmt::format("schedule '{}', stage {}, step {} ({})", schedule.name, st, i,
                         i < p.size() ? step_name(p[i]) : "end");
    };
    std::vector<int> forwarded(M, 0), backwarded(M, 0);
    for (size_t i = 0; i < p.size(); ++i) {
      const Step& s = p[i];
      const bool tail = s.kind == StepKind::ReduceGrads || s.kind == StepKind::OptimizerStep;
      TS_CHECK(tail == (s.micro_batch < 0), "{}: micro-batch {} is out of place", where(i),
               s.micro_batch);
      TS_CHECK(s.micro_batch < M, "{}: micro-batch {} of {}", where(i), s.micro_batch, M);
      auto next_is = [&](StepKind k) {
        return i + 1 < p.size() && p[i + 1].kind == k && p[i + 1].micro_batch == s.micro_batch;
      };
      auto prev_is = [&](StepKind k) {
        return i > 0 && p[i - 1].kind == k && p[i - 1].micro_batch == s.micro_batch;
      };
      switch (s.kind) {
        case StepKind::Forward:
          TS_CHECK(forwarded[s.micro_batch]++ == 0, "{}: forwarded twice", where(i));
          TS_CHECK(st == 0 || prev_is(StepKind::RecvActivation),
                   "{}: a forward off the first stage follows its activation's receive", where(i));
          TS_CHECK(st == S - 1 || next_is(StepKind::SendActivation),
                   "{}: a forward off the last stage is followed by its activation's send",
                   where(i));
          break;
        case StepKind::Backward:
          TS_CHECK(forwarded[s.micro_batch] == 1, "{}: backward before forward", where(i));
          TS_CHECK(backwarded[s.micro_batch]++ == 0, "{}: backwarded twice", where(i));
          TS_CHECK(st == S - 1 || prev_is(StepKind::RecvGrad),
                   "{}: a backward off the last stage follows its gradient's receive", where(i));
          TS_CHECK(st == 0 || next_is(StepKind::SendGrad),
                   "{}: a backward off the first stage is followed by its gradient's send",
                   where(i));
          break;
        case StepKind::RecvActivation:
          TS_CHECK(st > 0 && next_is(StepKind::Forward), "{}: stray activation receive", where(i));
          break;
        case StepKind::SendActivation:
          TS_CHECK(st < S - 1 && prev_is(StepKind::Forward), "{}: stray activation send", where(i));
          break;
        case StepKind::RecvGrad:
          TS_CHECK(st < S - 1 && next_is(StepKind::Backward), "{}: stray gradient receive", where(i));
          break;
        case StepKind::SendGrad:
          TS_CHECK(st > 0 && prev_is(StepKind::Backward), "{}: stray gradient send", where(i));
          break;
        case StepKind::ReduceGrads:
          TS_CHECK(i + 2 == p.size(), "{}: ReduceGrads is the second-last step", where(i));
          break;
        case StepKind::OptimizerStep:
          TS_CHECK(i + 1 == p.size() && prev_is(StepKind::ReduceGrads),
                   "{}: OptimizerStep is the last step, after ReduceGrads", where(i));
          break;
      }
    }
    TS_CHECK(!p.empty() && p.back().kind == StepKind::OptimizerStep,
             "{}: the program must end with ReduceGrads, OptimizerStep", where(p.size()));
    for (int m = 0; m < M; ++m) {
      TS_CHECK(forwarded[m] == 1 && backwarded[m] == 1,
               "schedule '{}', stage {}: micro-batch {} is forwarded {} and backwarded {} time(s), "
               "not once each",
               schedule.name, st, m, forwarded[m], backwarded[m]);
    }
  }
  (void)simulate(schedule);  // throws on a deadlock
}

Timeline simulate(const Schedule& schedule, int forward_cost, int backward_cost) {
  const int S = schedule.stages;
  std::vector<size_t> pc(S, 0);
  std::vector<int> clock(S, 0), busy(S, 0);
  // When each transfer's send completed (buffered: a send never waits for its receive).
  std::vector<std::vector<int>> act_sent(S, std::vector<int>(schedule.micro_batches, -1));
  std::vector<std::vector<int>> grad_sent(S, std::vector<int>(schedule.micro_batches, -1));
  bool progress = true;
  while (progress) {
    progress = false;
    for (int st = 0; st < S; ++st) {
      const StageProgram& p = schedule.programs[st];
      while (pc[st] < p.size()) {
        const Step& s = p[pc[st]];
        const int m = s.micro_batch;
        if (s.kind == StepKind::RecvActivation) {
          const int at = act_sent[st - 1][m];
          if (at < 0) break;  // not sent yet: another stage must move first
          clock[st] = std::max(clock[st], at);
        } else if (s.kind == StepKind::RecvGrad) {
          const int at = grad_sent[st + 1][m];
          if (at < 0) break;
          clock[st] = std::max(clock[st], at);
        } else if (s.kind == StepKind::Forward) {
          clock[st] += forward_cost;
          busy[st] += forward_cost;
        } else if (s.kind == StepKind::Backward) {
          clock[st] += backward_cost;
          busy[st] += backward_cost;
        } else if (s.kind == StepKind::SendActivation) {
          act_sent[st][m] = clock[st];
        } else if (s.kind == StepKind::SendGrad) {
          grad_sent[st][m] = clock[st];
        }
        ++pc[st];
        progress = true;
      }
    }
  }
  for (int st = 0; st < S; ++st) {
    const StageProgram& p = schedule.programs[st];
    TS_CHECK(pc[st] == p.size(), "schedule '{}' deadlocks: stage {} waits at step {} ({})",
             schedule.name, st, pc[st], step_name(p[pc[st]]));
  }
  Timeline t;
  t.makespan = *std::max_element(clock.begin(), clock.end());
  int64_t idle = 0;
  for (int st = 0; st < S; ++st) idle += t.makespan - busy[st];
  t.bubble_fraction = t.makespan > 0 ? static_cast<double>(idle) / (int64_t{t.makespan} * S) : 0.0;
  return t;
}

std::string to_string(const Schedule& schedule) {
  std::string out;
  for (int st = 0; st < schedule.stages; ++st) {
    out += fmt::format("stage {}:", st);
    for (const Step& s : schedule.programs[st]) out += " " + step_name(s);
    out += "\n";
  }
  return out;
}

}  // namespace tessera::parallel::pp
