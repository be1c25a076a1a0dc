// The training engine: micro-batches with gradient accumulation, global-norm clipping,
// AdamW over the flat state, the learning-rate schedule, evaluation, metrics and the
// final weights.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "memory/flat_buffers.h"
#include "memory/zero/replicated_access.h"
#include "memory/zero/sharded_access.h"
#include "parallel/comm/process_group.h"
#include "models/gpt.h"
#include "runtime/engine/config.h"
#include "runtime/engine/token_data.h"

namespace tessera::engine {

struct StepStats {
  int64_t step = 0;  // 1-based
  double loss = 0.0;
  double lr = 0.0;
  double grad_norm = 0.0;  // before clipping
  double ms = 0.0;
  double tokens_per_s = 0.0;
};

class Trainer {
 public:
  // dp_group: the data-parallel group this rank trains in (null: one rank). Every rank
  // builds its own Trainer with the same config; rank 0 writes metrics and weights.
  explicit Trainer(TrainConfig config, parallel::ProcessGroup* dp_group = nullptr);
  ~Trainer();

  // One optimizer step over gradient_accumulation_steps micro-batches.
  StepStats step();
  // Mean loss over eval_iters batches of the validation files (from their start).
  double evaluate();
  // Runs config.steps steps with logging, evaluation, metrics and the final save.
  void run();

  const TrainConfig& config() const { return config_; }
  models::GPT<float>& model() { return model_; }
  ParamAccess& params() { return *access_; }
  // The ZeRO stage 1-3 access when this rank trains sharded (null at stage 0 or on one rank:
  // with nothing to partition every stage is stage 0).
  memory::ShardedParamAccess* sharded() { return sharded_; }
  // Collective at stage 3: every rank of the group must call it. The full parameters.
  std::vector<float> full_params();
  int64_t steps_done() const { return steps_done_; }
  int dp_rank() const { return dp_ != nullptr ? dp_->rank() : 0; }
  int dp_size() const { return dp_ != nullptr ? dp_->size() : 1; }

 private:
  void optimizer_step(double lr, double clip_scale);
  // What this rank's optimizer updates: the whole model at stage 0, the owned shard else.
  memory::OptimizerShard optimizer_shard();
  // The global gradient norm from this rank's part of the averaged gradients.
  double grad_norm();

  // The mean of x over data-parallel ranks (x itself on one rank).
  double dp_mean(double x);

  TrainConfig config_;
  parallel::ProcessGroup* dp_ = nullptr;
  models::GPT<float> model_;
  std::unique_ptr<memory::FlatState<float>> state_;  // stage 0 only
  std::unique_ptr<ParamAccess> access_;
  memory::ReplicatedParamAccess* replicated_ = nullptr;  // access_ at stage 0, data-parallel
  memory::ShardedParamAccess* sharded_ = nullptr;        // access_ at stages 1-3
  std::unique_ptr<DataLoader> train_loader_;
  std::vector<int32_t> inputs_, targets_;
  int64_t steps_done_ = 0;
};

}  // namespace tessera::engine
