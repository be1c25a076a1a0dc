// The training engine: micro-batches with gradient accumulation, global-norm clipping,
// AdamW over the flat state, the learning-rate schedule, evaluation, metrics and the
// final weights; in f32, or in bf16 / f16 with fp32 master weights (fp16 with DeepSpeed's
// loss scaling: an overflowing step is skipped on every rank and the scale lowered).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "memory/flat_buffers.h"
#include "memory/zero/replicated_access.h"
#include "memory/zero/sharded_access.h"
#include "parallel/comm/process_group.h"
#include "parallel/pp/schedule.h"
#include "parallel/topology.h"
#include "models/gpt.h"
#include "runtime/engine/checkpointer.h"
#include "runtime/engine/config.h"
#include "runtime/engine/loss_scaler.h"
#include "runtime/engine/pipeline.h"
#include "runtime/engine/token_data.h"
#include "runtime/engine/trace.h"

namespace tessera::engine {

struct StepStats {
  int64_t step = 0;  // 1-based
  double loss = 0.0;
  double lr = 0.0;
  double grad_norm = 0.0;  // before clipping, unscaled (not finite on an overflow)
  double ms = 0.0;
  double tokens_per_s = 0.0;
  // fp16 only: the loss scale this step ran with, whether it overflowed and was skipped
  // (no update, the scale lowered as the rules say), and the run's totals so far.
  std::optional<double> loss_scale;
  bool skipped = false;
  int64_t skipped_steps = 0;
  int64_t overflow_count = 0;
};

class Trainer : private StepRunner {
 public:
  // world: every rank of the run (null: one rank). With tensor_parallel t > 1 or
  // pipeline_parallel p > 1 it is laid out in Megatron's order (parallel/topology.h): groups
  // of t consecutive ranks split each layer, the ranks with the same place in them form the
  // data-parallel groups, and p such blocks of ranks are the pipeline stages; else the whole
  // world is data-parallel. Every rank builds its own Trainer with the same config
  // (collective); world rank 0 writes metrics and weights.
  //
  // Pipeline parallelism: each rank holds its stage's blocks (v model chunks under the
  // interleaved schedule, pipeline.h) and runs its program of the schedule
  // (parallel/pp/schedule.h): forwards and backwards of micro-batches, activations and
  // gradients sent to its neighbours. The first stage's wte and the last stage's head copy
  // are tied by summing their gradients after the step's reduction; the loss, the gradient
  // norm, clipping and fp16's overflow decision are agreed over every stage.
  explicit Trainer(TrainConfig config, parallel::ProcessGroup* world = nullptr);
  ~Trainer();

  // One optimizer step over gradient_accumulation_steps micro-batches. Throws when a
  // non-finite loss or gradient cannot be handled (f32 / bf16), or when fp16 overflows with
  // the scale already at fp16.min_loss_scale.
  StepStats step();
  // Mean loss over eval_iters batches of the validation files (from their start).
  double evaluate();
  // Runs the steps left of config.steps with logging, evaluation, metrics, checkpoints
  // (checkpoint block) and the final save. Returns false when SIGTERM or SIGINT stopped it
  // early: the step in progress finished and was saved as a checkpoint (checkpoint.dir set;
  // without it the signals end the process as usual).
  bool run();
  // Collective: saves a training checkpoint of this step into checkpoint.dir (every rank
  // writes its own shard; see checkpoint_io.h). Needs checkpoint.dir.
  void save_checkpoint();
  // The checkpoint this trainer resumed from ("" for a fresh start).
  const std::string& resumed_from() const { return resumed_from_; }
  Checkpointer* checkpointer() { return checkpointer_.get(); }

  const TrainConfig& config() const { return config_; }
  models::GPT<float>& model() { return model_; }
  DType precision() const { return config_.precision; }
  // fp16 only (else null).
  const LossScaler* loss_scaler() const { return scaler_ ? &*scaler_ : nullptr; }
  // Optimizer updates applied: steps_done() less the skipped ones.
  int64_t updates_done() const { return updates_done_; }
  // Runs on every rank after the gradients are reduced and before they are checked, with
  // the step about to finish (1-based) and this rank's gradient shard: tests inject inf and
  // nan here.
  using GradientHook = std::function<void(int64_t step, const memory::OptimizerShard& shard)>;
  void set_gradient_hook(GradientHook hook) { gradient_hook_ = std::move(hook); }
  ParamAccess& params() { return *access_; }
  // The ZeRO stage 1-3 access when this rank trains sharded (null at stage 0 or on one rank:
  // with nothing to partition every stage is stage 0).
  memory::ShardedParamAccess* sharded() { return sharded_; }
  // The full fp32 parameters (the master weights when training in 16 bits), laid out by
  // full_registry(), to read while the trainer lives (saving, sampling): at stage 0 without
  // tensor parallelism a view of the trainer's own weights, no copy; else gathered
  // (collective: every rank must call it) into a buffer charged to MemCategory::Other.
  struct WholeWeights {
    const float* data = nullptr;
    Storage gathered;  // stages 1-3 or tensor parallelism only
  };
  WholeWeights whole_weights();
  // The one-rank model's registry (Hugging Face's tensors, whole): whole_weights()'s layout.
  const ParamRegistry& full_registry() const { return full_registry_; }
  // A copy of whole_weights() (tests). Collective at stages 1-3.
  std::vector<float> full_params();
  int64_t steps_done() const { return steps_done_; }
  int dp_rank() const { return dp_ != nullptr ? dp_->rank() : 0; }
  int dp_size() const { return dp_ != nullptr ? dp_->size() : 1; }
  int tp_rank() const { return tp_ != nullptr ? tp_->rank() : 0; }
  int tp_size() const { return tp_ != nullptr ? tp_->size() : 1; }
  int world_rank() const { return world_ != nullptr ? world_->rank() : 0; }
  int world_size() const { return world_ != nullptr ? world_->size() : 1; }
  int pp_rank() const { return pp_ != nullptr ? pp_->rank() : 0; }
  int pp_size() const { return pp_ != nullptr ? pp_->size() : 1; }
  // The step as data: this rank's program of the schedule.
  const parallel::pp::Schedule& schedule() const { return schedule_; }
  // Spans of the traced step (training.trace_step), kept after it.
  const TraceRecorder& trace() const { return trace_; }

 private:
  // The schedule's OptimizerStep: the mean loss over ranks, the gradient norm, fp16's
  // overflow decision, clipping and the update. local_loss: this rank's mean over its
  // micro-batches.
  StepStats finish_step(double local_loss, double loss_scale);
  // grad_scale multiplies the gradients first: clipping and fp16's unscaling.
  void apply_update(double lr, double grad_scale);
  // What this rank's optimizer updates: the whole model at stage 0, the owned shard else.
  memory::OptimizerShard optimizer_shard();
  // The global gradient norm from this rank's part of the averaged gradients (as stored:
  // still multiplied by the loss scale).
  double grad_norm();
  // Whether any rank's value of `local` is true.
  bool any_rank(bool local);
  // This rank's weights (the one-rank layout's part it holds, whole over data parallelism).
  WholeWeights local_weights();

  // The mean of x over data-parallel ranks (x itself on one rank).
  double dp_mean(double x);
  // Pipeline parallelism: the virtual stage of `chunk` on this rank, whether it is the
  // model's first or last, and the pipeline ranks of its neighbours.
  int virtual_stage(int chunk) const;
  bool first_virtual(int chunk) const { return virtual_stage(chunk) == 0; }
  bool last_virtual(int chunk) const;
  int prev_rank() const { return (pp_rank() + pp_size() - 1) % pp_size(); }
  int next_rank() const { return (pp_rank() + 1) % pp_size(); }
  // The activation elements a stage sends for one micro-batch.
  size_t activation_count() const;
  // The steps of this rank's program (StepRunner, run by run_program in step()).
  void forward(const parallel::pp::Step& step, int slot) override;
  void backward(const parallel::pp::Step& step, int slot, bool last_of_chunk) override;
  void recv_activation(const parallel::pp::Step& step, int slot) override;
  void send_activation(const parallel::pp::Step& step, int slot) override;
  void recv_grad(const parallel::pp::Step& step) override;
  void send_grad(const parallel::pp::Step& step) override;
  void reduce_grads() override;
  void optimizer_step() override;
  int32_t* micro_batch_inputs(int m) { return inputs_.data() + m * micro_batch_tokens(); }
  int32_t* micro_batch_targets(int m) { return targets_.data() + m * micro_batch_tokens(); }
  size_t micro_batch_tokens() const {
    return static_cast<size_t>(config_.micro_batch_size) * config_.seq_len;
  }
  // "activation of micro-batch 3 from virtual stage 1 to 2", for a transfer's messages.
  std::string transfer_name(const char* what, const parallel::pp::Step& step, int from,
                            int to) const;
  // The tied word embedding: the first stage's wte and the last stage's head copy get the sum
  // of both gradients (after the data-parallel reduction, on each rank's shard).
  void sum_tied_gradients();
  // Whether the gradient norm counts this parameter here: each parameter once over tensor-
  // parallel ranks (replicated ones on group rank 0) and pipeline stages (the head copy
  // not: it is wte's twin).
  bool counts_in_norm(const ParamSpec& p) const;
  // The mean loss of one evaluation batch run through the pipeline (every stage calls it).
  double pipeline_eval_loss(const int32_t* inputs, const int32_t* targets);
  // Checkpoints: the folder config.checkpoint.resume names, opened and checked against this
  // run (null for a fresh start); the manifest's header (all but the pieces) and this rank's
  // shard of the state now; restoring the step counts, loss scale, data position and the
  // moments after the weights were read (collective: agreed over every rank).
  std::unique_ptr<CheckpointReader> open_resume();
  Manifest checkpoint_header() const;
  ShardImage checkpoint_image();
  void restore_progress(CheckpointReader& reader, std::exception_ptr weights_error);

  TrainConfig config_;
  parallel::ProcessGroup* world_ = nullptr;            // null on one rank
  std::unique_ptr<parallel::Topology> topology_;  // tensor or pipeline parallelism only
  parallel::ProcessGroup* dp_ = nullptr;           // null: one data-parallel rank
  parallel::ProcessGroup* tp_ = nullptr;           // null: no tensor parallelism
  parallel::ProcessGroup* pp_ = nullptr;           // null: no pipeline parallelism
  // Pipeline parallelism: the ranks with this one's data-parallel place (the model's parts:
  // gradient norm, whole weights), those with its stage (fp16's range check) and the first
  // and last stage's (the tied embedding).
  parallel::ProcessGroupPtr model_group_, stage_group_, embedding_group_;
  models::GPT<float> model_;
  ParamRegistry full_registry_;
  std::unique_ptr<memory::FlatState> state_;  // stage 0 only
  std::unique_ptr<memory::StateStore> flat_states_;  // stage 0: a view of state_'s fp32 states
  // One data-parallel rank at ZeRO stages 1-3 with the optimizer offloaded: the shard's group.
  parallel::ProcessGroupPtr self_group_;
  std::optional<LossScaler> scaler_;        // fp16 only
  GradientHook gradient_hook_;
  std::unique_ptr<ParamAccess> access_;
  // access_ seen as what it is, for logging and the optimizer's shard; the step's lifecycle
  // goes through access_ alone.
  memory::ReplicatedParamAccess* replicated_ = nullptr;  // stage 0, data-parallel
  memory::ShardedParamAccess* sharded_ = nullptr;        // stages 1-3
  std::unique_ptr<DataLoader> train_loader_;
  // The step as data: gradient accumulation on one stage, or the pipeline schedule.
  parallel::pp::Schedule schedule_;
  std::vector<int32_t> inputs_, targets_;  // per micro-batch: micro_batch_size x seq_len tokens
  std::unique_ptr<StageLinks> links_;     // pipeline parallelism only
  TraceRecorder trace_;
  // The step in progress: its loss scale, the sum of its micro-batches' losses (the last
  // stage's) and, after the optimizer step, its stats.
  double step_loss_scale_ = 1.0;
  double step_loss_ = 0.0;
  std::optional<StepStats> step_stats_;
  int64_t steps_done_ = 0;
  int64_t updates_done_ = 0;  // Adam's step count and the lr schedule's: skipped steps excluded
  double last_lr_ = 0.0;
  std::unique_ptr<Checkpointer> checkpointer_;  // checkpoint.dir set only
  std::string resumed_from_;
};

}  // namespace tessera::engine
