// The trainer's pipeline pieces: which blocks each pipeline rank holds, and the
// point-to-point links that carry activations and gradients between neighbouring stages.
//
// Virtual stage k = c p + s is model chunk c of pipeline rank s (Megatron's interleaving; one
// chunk per rank without it). Activations flow from virtual stage k to k + 1, gradients back.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "models/gpt_layers.h"
#include "parallel/comm/process_group.h"
#include "parallel/pp/schedule.h"
#include "runtime/core/storage.h"
#include "runtime/engine/config.h"
#include "runtime/engine/trace.h"

namespace tessera::engine {

// The block boundaries of the p v virtual stages (virtual stage k holds blocks
// [bounds[k], bounds[k + 1])), as parallelism.pipeline_partition says: uniform, parameters
// (each block's parameters, the embeddings counted with the first block and ln_f and the
// head copy with the last), or explicit block counts.
std::vector<int> pipeline_boundaries(const TrainConfig& config);
// The chunks pipeline rank `stage` holds: virtual stages stage, stage + p, ...
models::PipelinePart pipeline_part(const TrainConfig& config, int stage);

// What a rank does at each kind of step of its program: the trainer does it with its model's
// stages, tests with fakes (so the executor is checked without a model).
class StepRunner {
 public:
  virtual ~StepRunner() = default;
  // slot: the micro-batch's activation slot within its chunk's store.
  virtual void forward(const parallel::pp::Step& step, int slot) = 0;
  // last_of_chunk: the chunk's last backward of the step (its gradients then reduce).
  virtual void backward(const parallel::pp::Step& step, int slot, bool last_of_chunk) = 0;
  virtual void recv_activation(const parallel::pp::Step& step, int slot) = 0;
  virtual void send_activation(const parallel::pp::Step& step, int slot) = 0;
  virtual void recv_grad(const parallel::pp::Step& step) = 0;
  virtual void send_grad(const parallel::pp::Step& step) = 0;
  virtual void reduce_grads() = 0;
  virtual void optimizer_step() = 0;
};

// Runs one rank's program in order: each step with its slot (a transfer uses its forward's,
// which the validator puts right beside it), each chunk's last backward marked, and a span
// per step in `trace` (null: none) named as the schedule prints it (F3, B3, ...).
void run_program(const parallel::pp::StageProgram& program, StepRunner& runner,
                 TraceRecorder* trace);

// One pipeline rank's sends and receives over the pipeline group. A send copies its data into
// a buffer of its own and returns at once (the stage reuses its output and input-gradient
// buffers before the neighbour receives them); a receive waits. That is the buffered-send model
// the schedule validator (parallel/pp/schedule.h) proves deadlock-free, on every backend.
class StageLinks {
 public:
  explicit StageLinks(parallel::ProcessGroup& pipeline);
  // With sends still in flight (a stage failing mid-step) the group is aborted first, so no
  // peer reads a buffer after it is freed.
  ~StageLinks();
  StageLinks(const StageLinks&) = delete;
  StageLinks& operator=(const StageLinks&) = delete;

  // `what` names the transfer in a timeout's message ("activation of micro-batch 3 for
  // virtual stage 2").
  void send(const float* data, size_t count, int dst, const std::string& what);
  void recv(float* data, size_t count, int src, const std::string& what);
  // Waits for every send posted (the end of a step), rethrowing a failure.
  void wait_sends();
  // Bytes of the send buffers (charged to MemCategory::Comm).
  size_t buffer_bytes() const;

 private:
  struct Pending {
    Storage buffer;
    parallel::WorkPtr work;  // null: free
  };
  parallel::ProcessGroup& group_;
  std::vector<Pending> sends_;
};

}  // namespace tessera::engine
