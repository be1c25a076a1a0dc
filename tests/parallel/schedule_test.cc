// Schedules as data (parallel/pp/schedule.h), checked without running a model: the one-stage
// schedule is today's gradient accumulation, GPipe and 1F1B have the step order, activation
// slots and bubble their papers give, validate() rejects broken programs, and the simulator
// finds deadlocks.
#include "parallel/pp/schedule.h"

#include <gtest/gtest.h>

#include <fmt/format.h>

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
}

}  // namespace
}  // namespace tessera::parallel::pp
