// Schedules as data (parallel/pp/schedule.h), checked without running a model: the one-stage
// schedule is today's gradient accumulation, GPipe, 1F1B and interleaved 1F1B have the step
// order, activation slots and bubble their papers give over every small shape, validate()
// rejects broken programs naming the rule, and the simulator finds deadlocks.
#include "parallel/pp/schedule.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "tests/common/expect_invalid.h"
#include "runtime/core/error.h"

namespace tessera::parallel::pp {
namespace {

std::string program(const Schedule& s, int stage) {
  const std::string full = to_string(s), want = fmt::format("stage {}:", stage);
  const size_t at = full.find(want);
  return full.substr(at + want.size() + 1, full.find('\n', at) - at - want.size() - 1);
}

TEST(Schedule, OneStageIsGradientAccumulation) {
  const Schedule s = one_stage(3);
  validate(s);
  EXPECT_EQ(program(s, 0), "F0 B0 F1 B1 F2 B2 R O");
  EXPECT_EQ(slots_needed(s.programs[0]), 1);
  EXPECT_EQ(simulate(s).bubble_fraction, 0.0);
  // A pipeline schedule of one stage is the one-stage schedule.
  EXPECT_EQ(make_schedule("1f1b", 1, 3).programs, s.programs);
  EXPECT_EQ(gpipe(1, 3).programs, s.programs);
}

TEST(Schedule, GPipeForwardsAllThenBackwardsAll) {
  const Schedule s = gpipe(2, 3);
  validate(s);
  EXPECT_EQ(program(s, 0), "F0 sA0 F1 sA1 F2 sA2 rG2 B2 rG1 B1 rG0 B0 R O");
  EXPECT_EQ(program(s, 1), "rA0 F0 rA1 F1 rA2 F2 B2 sG2 B1 sG1 B0 sG0 R O");
  EXPECT_EQ(slots_needed(s.programs[0]), 3);  // every micro-batch in flight
}

TEST(Schedule, OneFOneBWarmsUpThenAlternates) {
  const Schedule s = one_f_one_b(4, 6);
  validate(s);
  // Stage s warms up with stages - 1 - s forwards and holds at most stages - s micro-batches.
  for (int st = 0; st < 4; ++st) EXPECT_EQ(slots_needed(s.programs[st]), 4 - st) << st;
  EXPECT_EQ(program(s, 3),
            "rA0 F0 B0 sG0 rA1 F1 B1 sG1 rA2 F2 B2 sG2 rA3 F3 B3 sG3 rA4 F4 B4 sG4 rA5 F5 B5 sG5 R O");
  // Fewer micro-batches than stages: the warm-up is cut short, nothing is lost.
  validate(one_f_one_b(4, 2));
  EXPECT_EQ(slots_needed(one_f_one_b(4, 2).programs[0]), 2);
}

TEST(Schedule, BubbleMatchesTheFormula) {
  // (p - 1) / (m + p - 1) for GPipe and 1F1B alike: 1F1B saves memory, not bubble.
  for (int p : {2, 4, 8}) {
    for (int m : {1, 4, 16}) {
      const double want = static_cast<double>(p - 1) / (m + p - 1);
      EXPECT_NEAR(simulate(gpipe(p, m)).bubble_fraction, want, 1e-12) << p << " " << m;
      EXPECT_NEAR(simulate(one_f_one_b(p, m)).bubble_fraction, want, 1e-12) << p << " " << m;
      EXPECT_EQ(simulate(gpipe(p, m)).makespan, 3 * (m + p - 1));
    }
  }
}

TEST(Schedule, SlotsAreReusedLowestFirst) {
  const Schedule s = one_f_one_b(2, 4);
  const std::vector<int> slots = assign_slots(s.programs[0]);
  // Stage 0: F0 F1 B0 F2 B1 F3 B2 B3: F2 takes B0's slot 0, F3 takes B1's slot 1.
  std::vector<int> forward_slots;
  for (size_t i = 0; i < slots.size(); ++i) {
    if (s.programs[0][i].kind == StepKind::Forward) forward_slots.push_back(slots[i]);
  }
  EXPECT_EQ(forward_slots, (std::vector<int>{0, 1, 0, 1}));
}

TEST(Schedule, ValidateNamesTheBrokenRule) {
  auto expect_error = [](const Schedule& s, const std::string& part) {
    try {
      validate(s);
      ADD_FAILURE() << "no error, wanted: " << part;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  Schedule twice = one_stage(2);
  twice.programs[0][2] = {StepKind::Forward, 0};
  expect_error(twice, "forwarded twice");
  Schedule early = one_stage(1);
  std::swap(early.programs[0][0], early.programs[0][1]);
  expect_error(early, "backward before forward");
  Schedule no_step = one_stage(1);
  no_step.programs[0].pop_back();
  expect_error(no_step, "ReduceGrads is the second-last step");
  Schedule missing = gpipe(2, 2);
  // Stage 1 never backwards micro-batch 0: drop B0 sG0.
  auto& p1 = missing.programs[1];
  p1.erase(p1.end() - 4, p1.end() - 2);
  expect_error(missing, "micro-batch 0 is forwarded 1 and backwarded 0");
  Schedule stray = gpipe(2, 1);
  stray.programs[0].insert(stray.programs[0].begin(), {StepKind::RecvActivation, 0});
  expect_error(stray, "stray activation receive");
}

TEST(Schedule, SimulatorFindsDeadlocks) {
  // Stage 0 waits for micro-batch 1's gradient before sending micro-batch 1's activation.
  Schedule s;
  s.name = "crossed";
  s.stages = 2;
  s.micro_batches = 2;
  s.programs = {
      {{StepKind::Forward, 0}, {StepKind::SendActivation, 0}, {StepKind::RecvGrad, 0},
       {StepKind::Backward, 0}, {StepKind::RecvGrad, 1}, {StepKind::Backward, 1},
       {StepKind::Forward, 1}, {StepKind::SendActivation, 1}, {StepKind::ReduceGrads, -1},
       {StepKind::OptimizerStep, -1}},
      {{StepKind::RecvActivation, 0}, {StepKind::Forward, 0}, {StepKind::Backward, 0},
       {StepKind::SendGrad, 0}, {StepKind::RecvActivation, 1}, {StepKind::Forward, 1},
       {StepKind::Backward, 1}, {StepKind::SendGrad, 1}, {StepKind::ReduceGrads, -1},
       {StepKind::OptimizerStep, -1}},
  };
  EXPECT_THROW(simulate(s), InvalidArgument);
  try {
    simulate(s);
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("deadlocks: stage 0 waits at step 4 (rG1)"),
              std::string::npos)
        << e.what();
  }
}

TEST(Schedule, RejectsBadShapesAndNames) {
  EXPECT_THROW(one_stage(0), InvalidArgument);
  EXPECT_THROW(gpipe(0, 2), InvalidArgument);
  EXPECT_THROW(make_schedule("interleaved-typo", 2, 4), InvalidArgument);
  EXPECT_THROW(make_schedule("interleaved-typo", 1, 4), InvalidArgument);  // even on one stage
}

using tessera::test::expect_invalid;

TEST(Schedule, InterleavedFollowsMegatronsOrder) {
  const Schedule s = interleaved_one_f_one_b(2, 4, 2);
  validate(s);
  EXPECT_EQ(s.chunks, 2);
  // Stage 0 warms up with (p - s - 1) 2 + (v - 1) p = 4 forwards: micro-batches 0, 1 through
  // chunk a (virtual stage 0), then the same through chunk b (virtual stage 2), whose input
  // comes from stage 1's chunk a; backwards walk the chunks the other way.
  EXPECT_EQ(program(s, 0),
            "F0a sA0a F1a sA1a rA0b F0b sA0b rA1b F1b sA1b F2a sA2a rG0b B0b sG0b F3a sA3a rG1b "
            "B1b sG1b rA2b F2b sA2b rG0a B0a rA3b F3b sA3b rG1a B1a rG2b B2b sG2b rG3b B3b sG3b "
            "rG2a B2a rG3a B3a R O");
  // Stage 1 warms up with (v - 1) p = 2; its chunk b is the last virtual stage: no sA, no rG.
  EXPECT_EQ(program(s, 1),
            "rA0a F0a sA0a rA1a F1a sA1a rA0b F0b B0b sG0b rA1b F1b B1b sG1b rA2a F2a sA2a rG0a "
            "B0a sG0a rA3a F3a sA3a rG1a B1a sG1a rA2b F2b B2b sG2b rA3b F3b B3b sG3b rG2a B2a "
            "sG2a rG3a B3a sG3a R O");
  EXPECT_EQ(interleaved_warmup(2, 4, 2, 0), 4);
  EXPECT_EQ(interleaved_warmup(2, 4, 2, 1), 2);
  EXPECT_EQ(interleaved_warmup(4, 4, 2, 3), 8);  // m == p: every forward first (Megatron)
  // One chunk is 1F1B, one stage the one-stage schedule.
  EXPECT_EQ(interleaved_one_f_one_b(4, 6, 1).programs, one_f_one_b(4, 6).programs);
  EXPECT_EQ(interleaved_one_f_one_b(1, 3, 2).programs, one_stage(3).programs);
  EXPECT_EQ(make_schedule("interleaved", 4, 8, 2).programs,
            interleaved_one_f_one_b(4, 8, 2).programs);
  EXPECT_EQ(make_schedule("interleaved", 4, 6, 1).programs, one_f_one_b(4, 6).programs);
}

TEST(Schedule, TransfersFollowTheVirtualStages) {
  // p = 3, v = 2: virtual stages 0 1 2 are chunk a of ranks 0 1 2, 3 4 5 chunk b.
  const Schedule s = interleaved_one_f_one_b(3, 6, 2);
  auto has = [&](int stage, StepKind kind, int chunk) {
    const StageProgram& p = s.programs[stage];
    return std::any_of(p.begin(), p.end(),
                       [&](const Step& x) { return x.kind == kind && x.chunk == chunk; });
  };
  for (int st = 0; st < 3; ++st) {
    for (int c = 0; c < 2; ++c) {
      const int k = virtual_stage(st, c, 3);
      EXPECT_EQ(has(st, StepKind::RecvActivation, c), k != 0) << st << c;
      EXPECT_EQ(has(st, StepKind::SendGrad, c), k != 0) << st << c;
      EXPECT_EQ(has(st, StepKind::SendActivation, c), k != 5) << st << c;
      EXPECT_EQ(has(st, StepKind::RecvGrad, c), k != 5) << st << c;
    }
  }
  EXPECT_EQ(virtual_stage(0, 1, 3), 3);  // rank 2 chunk a (2) sends to rank 0 chunk b (3)
}

TEST(Schedule, EveryShapeValidatesWithinItsMemoryAndBubble) {
  for (int p = 1; p <= 8; ++p) {
    for (int m = 1; m <= 32; ++m) {
      const std::string at = fmt::format("p={} m={}", p, m);
      const Schedule g = make_schedule("gpipe", p, m), f = make_schedule("1f1b", p, m);
      validate(g);
      validate(f);
      for (int st = 0; st < p; ++st) {
        // GPipe holds every micro-batch; 1F1B at most p - s (its warm-up plus one).
        EXPECT_EQ(slots_needed(g.programs[st]), p == 1 ? 1 : m) << at;
        EXPECT_EQ(slots_needed(f.programs[st]), std::min(p - st, m)) << at << " stage " << st;
        EXPECT_EQ(slots_needed(f.programs[st], 0), slots_needed(f.programs[st])) << at;
      }
      // Forward 1, backward 2: the last micro-batch's backward leaves stage 0 after
      // 3 (m + p - 1) units, and each stage idles 3 (p - 1) of them.
      const Timeline tg = simulate(g), tf = simulate(f);
      const double want = static_cast<double>(p - 1) / (m + p - 1);
      EXPECT_EQ(tg.makespan, 3 * (m + p - 1)) << at;
      EXPECT_EQ(tf.makespan, 3 * (m + p - 1)) << at;
      EXPECT_NEAR(tg.bubble_fraction, want, 1e-12) << at;
      EXPECT_NEAR(tf.bubble_fraction, want, 1e-12) << at;
      EXPECT_NEAR(tf.bubble_ratio, static_cast<double>(p - 1) / m, 1e-12) << at;

      for (int v = 2; v <= 4; ++v) {
        const std::string atv = fmt::format("{} v={}", at, v);
        if (p > 1 && m % p != 0) {
          expect_invalid([&] { make_schedule("interleaved", p, m, v); },
                         fmt::format("use a multiple of {} micro-batches", p));
          continue;
        }
        const Schedule s = make_schedule("interleaved", p, m, v);
        validate(s);
        if (p == 1) {
          EXPECT_EQ(s.programs, one_stage(m).programs) << atv;
          continue;
        }
        for (int st = 0; st < p; ++st) {
          // Megatron's bound: the warm-up's forwards plus the steady state's one, all chunks
          // together (at most all m v forwards).
          const int bound = std::min(interleaved_warmup(p, m, v, st) + 1, m * v);
          EXPECT_EQ(slots_needed(s.programs[st]), bound) << atv << " stage " << st;
          int per_chunk = 0;
          for (int c = 0; c < v; ++c) per_chunk += slots_needed(s.programs[st], c);
          EXPECT_GE(per_chunk, bound) << atv;
        }
        // Each chunk's forward takes 1, backward 2: the ramp is still p - 1 steps of one
        // chunk, now 1 / v of the work, so the bubble over the busy time is (p - 1) / (v m),
        // Megatron's figure, and strictly less than 1F1B's.
        const Timeline ti = simulate(s);
        EXPECT_EQ(ti.makespan, 3 * (v * m + p - 1)) << atv;
        EXPECT_NEAR(ti.bubble_fraction, static_cast<double>(p - 1) / (v * m + p - 1), 1e-12) << atv;
        EXPECT_NEAR(ti.bubble_ratio, static_cast<double>(p - 1) / (v * m), 1e-12) << atv;
        EXPECT_LT(ti.bubble_fraction, tf.bubble_fraction) << atv;
      }
    }
  }
}

TEST(Schedule, TimelinePlacesEachForwardAndBackward) {
  const Timeline t = simulate(one_f_one_b(2, 2));
  using K = StepKind;
  // Stage 1's B0 (2..4) delays F1, whose activation was ready at 2.
  EXPECT_EQ(t.steps[0], (std::vector<TimedStep>{{{K::Forward, 0}, 0, 1},
                                                {{K::Forward, 1}, 1, 1},
                                                {{K::Backward, 0}, 4, 2},
                                                {{K::Backward, 1}, 7, 2}}));
  EXPECT_EQ(t.steps[1], (std::vector<TimedStep>{{{K::Forward, 0}, 1, 1},
                                                {{K::Backward, 0}, 2, 2},
                                                {{K::Forward, 1}, 4, 1},
                                                {{K::Backward, 1}, 5, 2}}));
  EXPECT_EQ(t.makespan, 9);
  // Every stage's steps, one chunk's forward after another, never overlap.
  const Timeline ti = simulate(interleaved_one_f_one_b(4, 8, 3), 2, 5);
  for (const auto& stage : ti.steps) {
    ASSERT_EQ(stage.size(), 2u * 8 * 3);
    for (size_t i = 1; i < stage.size(); ++i) {
      EXPECT_GE(stage[i].start, stage[i - 1].start + stage[i - 1].duration);
    }
    EXPECT_LE(stage.back().start + stage.back().duration, ti.makespan);
  }
}

TEST(Schedule, SlotsArePerChunk) {
  const Schedule s = interleaved_one_f_one_b(2, 4, 2);
  const StageProgram& p0 = s.programs[0];
  const std::vector<int> slots = assign_slots(p0);
  // Stage 0: F0a F1a F0b F1b F2a B0b F3a B1b F2b B0a F3b B1a B2b B3b B2a B3a: each chunk's
  // store numbers its own slots from 0.
  std::vector<std::string> forwards;
  for (size_t i = 0; i < p0.size(); ++i) {
    if (p0[i].kind == StepKind::Forward) {
      forwards.push_back(fmt::format("{}:{}", step_name(p0[i], 2), slots[i]));
    }
  }
  EXPECT_EQ(forwards, (std::vector<std::string>{"F0a:0", "F1a:1", "F0b:0", "F1b:1", "F2a:2",
                                                "F3a:3", "F2b:0", "F3b:1"}));
  EXPECT_EQ(slots_needed(p0, 0), 4);
  EXPECT_EQ(slots_needed(p0, 1), 2);
  EXPECT_EQ(slots_needed(p0), 5);  // F0a F1a F0b F1b F2a live before B0b
  EXPECT_EQ(slots_needed(p0, 7), 0);
}

TEST(Schedule, ValidateNamesBrokenInterleavedRules) {
  // A receive that names the wrong chunk.
  Schedule wrong_chunk = interleaved_one_f_one_b(2, 2, 2);
  auto& p1 = wrong_chunk.programs[1];
  auto recv = std::find_if(p1.begin(), p1.end(), [](const Step& s) {
    return s.kind == StepKind::RecvActivation && s.chunk == 1;
  });
  ASSERT_NE(recv, p1.end());
  recv->chunk = 0;
  expect_invalid(
      [&] { validate(wrong_chunk); },
      "(rA0a): the forward after an activation receive runs chunk 1, not this step's chunk 0");

  // Only virtual stage 0 receives no activation: rank 0's chunk 1 must receive its input.
  Schedule no_recv = interleaved_one_f_one_b(2, 2, 2);
  auto& p0 = no_recv.programs[0];
  p0.erase(std::find_if(p0.begin(), p0.end(), [](const Step& s) {
    return s.kind == StepKind::RecvActivation && s.chunk == 1;
  }));
  expect_invalid([&] { validate(no_recv); },
                 "a forward off the first virtual stage follows its activation's receive");

  // Stage 1 chunk 0 never backwards micro-batch 1: drop rG1a B1a sG1a.
  Schedule missing = interleaved_one_f_one_b(2, 2, 2);
  auto& q1 = missing.programs[1];
  auto b = std::find(q1.begin(), q1.end(), Step{StepKind::Backward, 1, 0});
  ASSERT_NE(b, q1.end());
  q1.erase(b - 1, b + 2);
  expect_invalid([&] { validate(missing); },
                 "stage 1, chunk 0: micro-batch 1 is forwarded 1 and backwarded 0");

  // Stage 0 runs chunk b's forward of micro-batch 0 before chunk a's: it waits for an
  // activation that needs its own chunk a first.
  Schedule crossed = interleaved_one_f_one_b(2, 2, 2);
  auto& c0 = crossed.programs[0];
  // F0a sA0a F1a sA1a rA0b F0b sA0b ... -> rA0b F0b sA0b F0a sA0a F1a sA1a ...
  std::rotate(c0.begin(), c0.begin() + 4, c0.begin() + 7);
  ASSERT_EQ(c0[1], (Step{StepKind::Forward, 0, 1}));
  expect_invalid([&] { validate(crossed); }, "deadlocks: stage 0 waits at step 0 (rA0b)");

  // A chunk past the schedule's.
  Schedule past = one_f_one_b(2, 2);
  past.programs[0][0].chunk = 1;
  expect_invalid([&] { validate(past); }, "chunk 1 of 1 is out of place");
}

TEST(Schedule, MakeScheduleRefusesChunksWithoutInterleaving) {
  expect_invalid([] { make_schedule("1f1b", 4, 8, 2); },
                 "the 1f1b schedule has one model chunk per stage, got 2");
  expect_invalid([] { make_schedule("gpipe", 4, 8, 2); }, "use the interleaved schedule");
  expect_invalid([] { make_schedule("interleaved", 4, 6, 2); },
                 "the interleaved schedule needs the micro-batches (6) to be a multiple of "
                 "pipeline_model_parallel_size (4), virtual size 2: use a multiple of 4 "
                 "micro-batches (gradient_accumulation_steps), e.g. 4 or 8");
  expect_invalid([] { make_schedule("interleaved", 4, 3, 2); }, "e.g. 4 [");
  expect_invalid([] { make_schedule("interleaved", 4, 8, 0); }, "at least one model chunk");
}

}  // namespace
}  // namespace tessera::parallel::pp
