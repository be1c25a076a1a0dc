// The `tessera` subcommands. Each returns the process exit code; errors are exceptions
// caught once in main().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "memory/zero/zero_plan.h"

namespace tessera::launch {

struct PrepareOptions {
  std::string input;
  std::string out_dir = "data";
  std::string name;  // output prefix; default: the input's stem
  double val_fraction = 0.1;
};
int run_prepare(const PrepareOptions& opts);

struct TrainOptions {
  std::string config_path;
  std::vector<std::string> overrides;
  int sim_ranks = 0;  // > 0: that many ranks as threads of this process
  int tp = 0;         // > 0: parallelism.tensor_model_parallel_size
  bool sequence_parallel = false;
  int pp = 0;          // > 0: parallelism.pipeline_model_parallel_size
  int virtual_pp = 0;  // > 0: parallelism.virtual_pipeline_model_parallel_size
  std::string schedule;  // non-empty: parallelism.pipeline_schedule
  std::string resume;    // non-empty: checkpoint.resume ("latest" or a folder)
};
int run_train(const TrainOptions& opts);

int run_env();

struct GenerateOptions {
  std::string weights;
  std::string prompt;
  int max_new_tokens = 200;
  float temperature = 0.8f;
  int top_k = 40;
  uint64_t seed = 1337;
  bool raw = false;  // write the bytes as generated instead of escaping unprintable ones
};
int run_generate(const GenerateOptions& opts);

// `tessera checkpoint inspect | verify | export DIR`: DIR is a step folder or a checkpoint
// root (its latest).
struct CheckpointOptions {
  std::string dir;
  bool json = false;          // inspect: print manifest.json as it is
  std::string out;            // export: the safetensors file (config.json goes beside it)
  std::string dtype = "f32";  // export: f32, bf16 or f16
};
int run_checkpoint_inspect(const CheckpointOptions& opts);
int run_checkpoint_verify(const CheckpointOptions& opts);
int run_checkpoint_export(const CheckpointOptions& opts);

struct EstimateOptions {
  std::string model;    // a preset, or
  int64_t params = 0;   // a parameter count (formula only)
  int stage = 0;
  int ranks = 1;  // data-parallel ranks (each a group of `tp` ranks)
  int tp = 1;     // tensor-parallel size: per-rank figures of the rank-0 local model
  bool sequence_parallel = false;  // with tp > 1: LayerNorm / residual rows split over tp
  std::string dtype = "f32";
  std::string offload = "none";  // of the optimizer: none, cpu or nvme
  int64_t sub_group_size = 1'000'000'000;  // zero_optimization.sub_group_size
  int buffer_count = 4;                    // offload_optimizer.buffer_count
  std::string offload_param = "none";      // of stage 3's parameters: none, cpu or nvme
  int param_buffer_count = 5;              // offload_param.buffer_count
  int64_t param_buffer_size = 100'000'000;  // offload_param.buffer_size (elements)
  int64_t max_in_cpu = 1'000'000'000;       // offload_param.max_in_cpu (elements)
  int batch = 0;  // > 0: add the activations of one micro-batch
  int seq = 0;
  std::string recompute = "none";  // activation checkpointing: none, full or selective
  int recompute_num_layers = 1;     // full: blocks per checkpointed group
  int64_t reduce_bucket_size = 25'000'000;
  // Stage 3 (DeepSpeed's names): the gathered layers' bound.
  int64_t prefetch_bucket_size = 50'000'000;
  int64_t param_persistence_threshold = 100'000;
  int64_t max_live_parameters = 1'000'000'000;
  // The process row (code and libraries, before allocating): -1 measures this process; tests
  // give a figure (0: no row).
  int64_t process_bytes = -1;
};
int run_estimate(const EstimateOptions& opts);
// The ZeRO options the estimate plans with (its tests plan with the same).
memory::ZeroOptions estimate_zero_options(const EstimateOptions& opts);

struct ScheduleOptions {
  int pp = 1;            // pipeline ranks p (pipeline_model_parallel_size)
  int micro = 1;         // micro-batches per step m (gradient_accumulation_steps)
  int virtual_size = 1;  // model chunks per rank v (virtual_pipeline_model_parallel_size)
  std::string schedule;  // gpipe, 1f1b or interleaved; empty: 1f1b, or interleaved when v > 1
  int width = 120;       // wrap the timeline at this many columns (0: never)
};
// What `tessera schedule` prints: the timeline per rank, the step lists, the bubble beside
// its formulas and the activations in flight.
std::string format_schedule(const ScheduleOptions& opts);
int run_schedule(const ScheduleOptions& opts);

struct HostSlots {
  std::string host;
  int slots = 1;
};
// DeepSpeed-style hostfile: "host slots=N" lines, '#' comments; a host listed twice is an error.
std::vector<HostSlots> parse_hostfile(const std::string& path);
std::vector<HostSlots> filter_hosts(std::vector<HostSlots> hosts, const std::string& include,
                                    const std::string& exclude);

struct LaunchOptions {
  int ranks = 1;
  std::string hostfile;
  std::string include, exclude;
  std::string mpirun = "mpirun";
  bool dry_run = false;  // print the mpirun command instead of running it
  std::vector<std::string> command;
};
// The mpirun argument vector `tessera launch` runs.
std::vector<std::string> mpirun_command(const LaunchOptions& opts);
int run_launch(const LaunchOptions& opts);

}  // namespace tessera::launch
