// Training schedules as data: for each pipeline stage, the list of steps it runs in one
// optimizer step. Pure functions build them; the engine executes them
// (runtime/engine/trainer.cc); tests check them without running a model.
//
// A single-rank or data-parallel run is the one-stage schedule: gradient accumulation, forward
// and backward of each micro-batch in turn. GPipe runs every forward, then every backward;
// 1F1B (PipeDream-flush, as in Megatron-LM) warms up with stages - 1 - s forwards on stage s,
// then alternates one forward and one backward, holding at most stages - s micro-batches.
//
// Interleaved 1F1B (Megatron-LM's virtual pipeline) gives each of the p ranks v model chunks:
// chunk c of rank s is virtual stage c * p + s, so the model runs through chunk 0 of every
// rank, then chunk 1 of every rank, and so on. Activations go from virtual stage k to k + 1
// (rank s chunk c to rank s + 1 chunk c, and rank p - 1 chunk c to rank 0 chunk c + 1),
// gradients the other way. Each rank's bubble shrinks by v for more transfers.
#pragma once

#include <string>
#include <vector>

namespace tessera::parallel::pp {

enum class StepKind {
  Forward,         // forward of a micro-batch (the last stage stops before the loss)
  Backward,        // loss (last stage) and backward of a micro-batch
  RecvActivation,  // from the previous (virtual) stage, before this micro-batch's forward
  SendActivation,  // to the next (virtual) stage, after it
  RecvGrad,        // from the next (virtual) stage, before this micro-batch's backward
  SendGrad,        // to the previous (virtual) stage, after it
  ReduceGrads,     // wait for every data-parallel gradient reduction of the step
  OptimizerStep,   // clip, unscale, update
};

struct Step {
  StepKind kind = StepKind::Forward;
  int micro_batch = -1;  // -1 for ReduceGrads and OptimizerStep
  // The model chunk (0..chunks-1) the step runs or moves data for; transfers carry the chunk
  // of the forward or backward they belong to. Always 0 outside the interleaved schedule.
  int chunk = 0;
  bool operator==(const Step&) const = default;
};

using StageProgram = std::vector<Step>;

struct Schedule {
  std::string name;
  int stages = 1;
  int micro_batches = 1;
  std::vector<StageProgram> programs;  // one per stage, stage 0 first
  int chunks = 1;  // v: model chunks per stage (last, so {name, stages, m, programs} still builds)
};

// Gradient accumulation on one stage: F0 B0 F1 B1 ... then ReduceGrads, OptimizerStep.
Schedule one_stage(int micro_batches);
Schedule gpipe(int stages, int micro_batches);
Schedule one_f_one_b(int stages, int micro_batches);
// Megatron-LM's interleaved 1F1B. The micro-batches must be a multiple of the stages (Megatron's
// constraint: a rank forwards p micro-batches through one chunk, then moves to the next).
// chunks == 1 is 1F1B; one stage is the one-stage schedule.
Schedule interleaved_one_f_one_b(int stages, int micro_batches, int chunks);
// The forwards stage `stage` runs before its first backward under interleaved 1F1B:
// (p - s - 1) * 2 + (v - 1) * p, at most m * v; all m * v when m == p (as Megatron).
int interleaved_warmup(int stages, int micro_batches, int chunks, int stage);
// By name: "gpipe", "1f1b" or "interleaved" (chunks > 1 needs "interleaved"; interleaved with
// one chunk is 1f1b); one stage is always the one-stage schedule.
Schedule make_schedule(const std::string& name, int stages, int micro_batches, int chunks = 1);

// Chunk c of stage s is virtual stage c * stages + s.
inline int virtual_stage(int stage, int chunk, int stages) { return chunk * stages + stage; }

// Throws InvalidArgument naming the first broken rule: on every (stage, chunk) each
// micro-batch is forwarded once and then backwarded once; a forward (backward) comes right
// after the receive of its activation (gradient), same micro-batch and chunk, unless it is the
// first (last) virtual stage, and right before its send, unless it is the last (first)
// virtual stage; each program ends with ReduceGrads then OptimizerStep; and the stages, run
// together with buffered sends, never deadlock (so every receive has its send).
void validate(const Schedule& schedule);

// Activation slots: the engine keeps one activation store per chunk, and a micro-batch holds
// one slot of its chunk's store from its Forward to its Backward.
// The most micro-batches forwarded and not yet backwarded at any point of the program, all
// chunks together: the peak of live activations (the figure of memory statements).
int slots_needed(const StageProgram& program);
// The slots chunk `chunk`'s store needs (0 if the program never runs that chunk). The sum
// over chunks can exceed slots_needed(program): the chunks' peaks need not coincide.
int slots_needed(const StageProgram& program, int chunk);
// The slot each step uses within its chunk's store (the lowest free one, taken at Forward,
// freed at Backward); -1 for steps without one.
std::vector<int> assign_slots(const StageProgram& program);

// A Forward or Backward placed in time by simulate().
struct TimedStep {
  Step step;
  int start = 0;
  int duration = 0;
  bool operator==(const TimedStep&) const = default;
};

// The schedule run on unit-time stages (a forward of one chunk takes forward_cost, a backward
// backward_cost; transfers are free and sends buffered): when the last stage finishes, the
// idle share of all stages' time until then (the pipeline bubble), and the bubble over the
// busy time (Megatron's figure: (p - 1) / m for 1F1B, (p - 1) / (v m) interleaved).
struct Timeline {
  int makespan = 0;
  double bubble_fraction = 0.0;               // idle / (makespan x stages)
  double bubble_ratio = 0.0;                  // idle / busy
  std::vector<std::vector<TimedStep>> steps;  // per stage, its Forwards and Backwards in order
};
Timeline simulate(const Schedule& schedule, int forward_cost = 1, int backward_cost = 2);

// "F3", "sG0", "R"; with chunks > 1 the chunk follows as a letter ("F3a" chunk 0, "B3b" chunk
// 1; ".c" past 26 chunks).
std::string step_name(const Step& step, int chunks = 1);
// "F0 F1 B0 B1 R O", one stage per line, for messages and logs.
std::string to_string(const Schedule& schedule);

}  // namespace tessera::parallel::pp
