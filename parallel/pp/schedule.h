// Training schedules as data: for each pipeline stage, the list of steps it runs in one
// optimizer step. Pure functions build them; the engine executes them
// (runtime/engine/trainer.cc); tests check them without running a model.
//
// A single-rank or data-parallel run is the one-stage schedule: gradient accumulation, forward
// and backward of each micro-batch in turn. GPipe runs every forward, then every backward;
// 1F1B (PipeDream-flush, as in Megatron-LM) warms up with stages - 1 - s forwards on stage s,
// then alternates one forward and one backward, holding at most stages - s micro-batches.
#pragma once

#include <string>
#include <vector>

namespace tessera::parallel::pp {

enum class StepKind {
  Forward,         // forward of a micro-batch (the last stage stops before the loss)
  Backward,        // loss (last stage) and backward of a micro-batch
  RecvActivation,  // from the previous stage, before this micro-batch's forward
  SendActivation,  // to the next stage, after it
  RecvGrad,        // from the next stage, before this micro-batch's backward
  SendGrad,        // to the previous stage, after it
  ReduceGrads,     // wait for every data-parallel gradient reduction of the step
  OptimizerStep,   // clip, unscale, update
};

struct Step {
  StepKind kind = StepKind::Forward;
  int micro_batch = -1;  // -1 for ReduceGrads and OptimizerStep
  bool operator==(const Step&) const = default;
};

using StageProgram = std::vector<Step>;

struct Schedule {
  std::string name;
  int stages = 1;
  int micro_batches = 1;
  std::vector<StageProgram> programs;  // one per stage, stage 0 first
};

// Gradient accumulation on one stage: F0 B0 F1 B1 ... then ReduceGrads, OptimizerStep.
Schedule one_stage(int micro_batches);
Schedule gpipe(int stages, int micro_batches);
Schedule one_f_one_b(int stages, int micro_batches);
// By name: "gpipe" or "1f1b"; one stage is always the one-stage schedule.
Schedule make_schedule(const std::string& name, int stages, int micro_batches);

// Throws InvalidArgument naming the first broken rule: every stage forwards each micro-batch
// once and then backwards it once; a stage receives each activation (gradient) it needs right
// before that forward (backward) and sends what its neighbour receives; each program ends
// with ReduceGrads then OptimizerStep; and the stages, run together with buffered sends, never
// deadlock.
void validate(const Schedule& schedule);

// Activation slots a stage needs: the most micro-batches forwarded and not yet backwarded at
// any point of its program.
int slots_needed(const StageProgram& program);
// The activation slot each step uses (the lowest free one, taken at Forward, freed at
// Backward); -1 for steps without one.
std::vector<int> assign_slots(const StageProgram& program);

// The schedule run on unit-time stages (a forward takes forward_cost, a backward
// backward_cost; transfers are free): when the last stage finishes, and the idle share of
// all stages' time until then, the pipeline bubble.
struct Timeline {
  int makespan = 0;
  double bubble_fraction = 0.0;
};
Timeline simulate(const Schedule& schedule, int forward_cost = 1, int backward_cost = 2);

// "F0 F1 B0 B1 R O", one stage per line, for messages and logs.
std::string to_string(const Schedule& schedule);

}  // namespace tessera::parallel::pp
