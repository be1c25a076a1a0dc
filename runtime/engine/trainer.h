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
#include "runtime/engine/config.h"
#include "runtime/engine/loss_scaler.h"
#include "runtime/engine/token_data.h"

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

class Trainer {
 public:
  // world: every rank of the run (null: one rank). With tensor_parallel t > 1 it is laid out
  // in Megatron's order (parallel/topology.h): groups of t consecutive ranks split each
  // layer, and the ranks with the same place in them form the data-parallel groups; else the
  // whole world is data-parallel. Every rank builds its own Trainer with the same config
  // (collective); world rank 0 writes metrics and weights.
  explicit Trainer(TrainConfig config, parallel::ProcessGroup* world = nullptr);
  ~Trainer();

  // One optimizer step over gradient_accumulation_steps micro-batches. Throws when a
  // non-finite loss or gradient cannot be handled (f32 / bf16), or when fp16 overflows with
  // the scale already at fp16.min_loss_scale.
  StepStats step();
  // Mean loss over eval_iters batches of the validation files (from their start).
  double evaluate();
  // Runs config.steps steps with logging, evaluation, metrics and the final save.
  void run();

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

 private:
  // The schedule's OptimizerStep: the mean loss over ranks, the gradient norm, fp16's
  // overflow decision, clipping and the update. local_loss: this rank's mean over its
  // micro-batches.
  StepStats finish_step(double local_loss, double loss_scale);
  // grad_scale multiplies the gradients first: clipping and fp16's unscaling.
  void optimizer_step(double lr, double grad_scale);
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

  TrainConfig config_;
  parallel::ProcessGroup* world_ = nullptr;            // null on one rank
  std::unique_ptr<parallel::Topology> topology_;       // tensor parallelism only
  parallel::ProcessGroup* dp_ = nullptr;                // null: one data-parallel rank
  parallel::ProcessGroup* tp_ = nullptr;                // null: no tensor parallelism
  models::GPT<float> model_;
  ParamRegistry full_registry_;
  std::unique_ptr<memory::FlatState> state_;  // stage 0 only
  std::optional<LossScaler> scaler_;        // fp16 only
  GradientHook gradient_hook_;
  std::unique_ptr<ParamAccess> access_;
  // access_ seen as what it is, for logging and the optimizer's shard; the step's lifecycle
  // goes through access_ alone.
  memory::ReplicatedParamAccess* replicated_ = nullptr;  // stage 0, data-parallel
  memory::ShardedParamAccess* sharded_ = nullptr;        // stages 1-3
  std::unique_ptr<DataLoader> train_loader_;
  // The step as data: gradient accumulation on one stage, with each step's activation slot.
  parallel::pp::Schedule schedule_;
  std::vector<int> slots_;
  std::vector<int32_t> inputs_, targets_;  // per slot: micro_batch_size x seq_len tokens
  int64_t steps_done_ = 0;
  int64_t updates_done_ = 0;  // Adam's step count and the lr schedule's: skipped steps excluded
};

}  // namespace tessera::engine
