// The training configuration: DeepSpeed's JSON keys where they apply, tessera's own blocks
// (model, data, training, output) for the rest. Every key is checked: an unknown one is an
// error with a did-you-mean, a wrong type names the key and the type expected, and a setting
// tessera does not implement is refused, never ignored.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "memory/zero/zero_plan.h"
#include "models/gpt_config.h"
#include "models/recompute.h"
#include "runtime/core/dtype.h"
#include "runtime/engine/loss_scaler.h"

namespace tessera::engine {

struct OptimizerConfig {
  std::string type = "AdamW";  // AdamW | Adam (Adam: weight decay folded into the gradient)
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.01f;
};

struct SchedulerConfig {
  std::string type;  // "" (constant lr), WarmupLR, WarmupDecayLR, WarmupCosineLR
  double warmup_min_lr = 0.0;
  double warmup_max_lr = 0.001;  // DeepSpeed's default; WarmupLR ignores the optimizer's lr
  int64_t warmup_num_steps = 1000;
  std::string warmup_type = "log";  // log | linear
  int64_t total_num_steps = -1;     // < 0: training.steps
  double warmup_min_ratio = 0.0;
  double cos_min_ratio = 0.0001;
};

// DeepSpeed's zero_optimization block, with DeepSpeed's defaults except where noted.
// Element counts may be written as JSON floats (5e8), as DeepSpeed configs often do.
struct ZeroConfig {
  int stage = 0;  // 0: replicated; 1: + optimizer shards; 2: + gradient shards; 3: + params
  // Elements per gradient bucket. DeepSpeed's default is 5e8 (one bucket for most models,
  // so no overlap); tessera's 2.5e7 (100 MB of f32) lets buckets of late layers travel
  // while early layers still run backward.
  int64_t reduce_bucket_size = 25'000'000;
  bool overlap_comm = true;
  // Gradients are always contiguous here (one flat buffer or bucket): parsed, no effect.
  bool contiguous_gradients = true;
  // Stages 1-2 all-gather the updated shards in one collective: parsed, no effect.
  int64_t allgather_bucket_size = 500'000'000;
  // Stages 1-3 always reduce-scatter (each rank needs only its shard): parsed, no effect.
  bool reduce_scatter = true;
  int64_t stage3_prefetch_bucket_size = 50'000'000;
  int64_t stage3_param_persistence_threshold = 100'000;  // per layer, tessera's gather unit
  int64_t stage3_max_live_parameters = 1'000'000'000;
  int64_t stage3_max_reuse_distance = 1'000'000'000;  // parsed; prefetch window decides reuse
  // The optimizer steps through a rank's shard in sub-groups of this many elements (with
  // offload_optimizer nvme, what is in memory at once).
  int64_t sub_group_size = 1'000'000'000;
  // DeepSpeed's offload blocks (docs/OFFLOAD.md) and the top-level aio block.
  memory::OffloadOptimizerOptions offload_optimizer;
  memory::OffloadParamOptions offload_param;
  memory::offload::AioOptions aio;

  // What the runtime and the estimator act on.
  memory::ZeroOptions options() const;
};

// The checkpoint block (docs/CHECKPOINTS.md): where training checkpoints go and how often.
struct CheckpointConfig {
  std::string dir;            // "": no checkpoints (and SIGTERM ends the run at once)
  int64_t save_interval = 0;  // steps between saves; 0: only at the end (and on SIGTERM)
  int keep_last = 0;          // step folders kept, newest first; 0: keep all
  bool async_save = false;    // write in a background thread while training goes on
  // --resume: "latest" (the dir's newest, or a fresh start when it holds none yet), a step
  // folder, or a checkpoint root (its latest); "": start fresh.
  std::string resume;
};

struct TrainConfig {
  // DeepSpeed batch arithmetic: train_batch = micro_batch * accumulation * data-parallel size.
  int64_t train_batch_size = 0;  // 0: implied
  int micro_batch_size = 0;      // train_micro_batch_size_per_gpu
  int gradient_accumulation_steps = 0;
  double gradient_clipping = 0.0;  // 0: off
  int steps_per_print = 10;
  OptimizerConfig optimizer;
  SchedulerConfig scheduler;
  ZeroConfig zero;
  // The fp16 / bf16 blocks: the working precision of parameters, gradients and GEMM
  // operands (f32, f16 with loss scaling, or bf16), with fp32 master weights and moments.
  DType precision = DType::F32;
  LossScalerConfig loss_scaler;  // the fp16 block's scaling keys; used when precision is f16
  // The parallelism block, in Megatron's names: tensor_model_parallel_size (t ranks split
  // every layer; the world is then data-parallel groups of t ranks, TP fastest) and
  // sequence_parallel.
  int tensor_parallel = 1;
  bool sequence_parallel = false;
  // pipeline_model_parallel_size (p stages of consecutive blocks, the outermost dimension:
  // world = DP x TP x PP), virtual_pipeline_model_parallel_size (v model chunks per stage,
  // the interleaved schedule), the schedule (1f1b, gpipe or interleaved) and how blocks are
  // assigned to stages: uniform, parameters (DeepSpeed's partition_method) or explicit block
  // counts per (virtual) stage ("3,3,2,2"). The micro-batches of a step are
  // gradient_accumulation_steps.
  int pipeline_parallel = 1;
  int virtual_pipeline = 1;
  std::string pipeline_schedule = "1f1b";
  std::string pipeline_partition = "uniform";
  // The activation_checkpointing block (none unless the block is present).
  models::RecomputePolicy recompute;

  models::GPTConfig model;
  std::string model_preset;  // "" when given explicitly
  std::string init_from;     // safetensors file with HF GPT-2 names to start from ("": init)

  std::vector<std::string> train_files;
  std::vector<std::string> val_files;
  int seq_len = 0;  // 0: the model's block_size
  bool shuffle = false;
  std::string data_format = "llmc";  // llmc | nanogpt

  int64_t steps = 100;
  uint64_t seed = 1337;
  int threads = 0;  // 0: all cores
  int64_t eval_interval = 0;  // 0: only at the end (when val files exist)
  int eval_iters = 10;
  int sample_tokens = 0;  // > 0: print a sample of this many tokens after training
  std::string sample_prompt = "\n";
  float sample_temperature = 0.8f;  // 0: greedy
  int sample_top_k = 40;            // 0: the whole vocabulary
  std::string output_dir = "runs/default";
  // training.trace_file: a Chrome trace (Perfetto, chrome://tracing) of every rank's spans in
  // step trace_step (1-based); "" for none.
  std::string trace_file;
  int64_t trace_step = 2;
  CheckpointConfig checkpoint;

  // Fills the batch triple from the data-parallel size (dp_world); throws with the
  // arithmetic when the three given values disagree.
  void resolve_batch(int dp_world);
};

// Parses JSON text. `source` names it in error messages.
TrainConfig parse_train_config(const std::string& json_text, const std::string& source);
TrainConfig load_train_config(const std::string& path,
                              const std::vector<std::string>& overrides = {});
// Applies "a.b=value" overrides (value parsed as JSON, or taken as a string) to JSON text.
std::string apply_overrides(const std::string& json_text, const std::vector<std::string>& overrides);

}  // namespace tessera::engine
