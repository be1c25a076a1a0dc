// Activation checkpointing: which of a stage's blocks keep their activations for backward and
// which keep only their input and run their forward again in backward. DeepSpeed's
// `activation_checkpointing` block in Megatron-LM's terms (docs/CONFIG.md):
// - full: a checkpointed group of blocks keeps only its input (the fp32 residual stream,
//   B x T x C); backward re-runs the group's forward, then its backward.
// - selective: every block keeps its GEMM inputs' producers that are costly (q/k/v, the
//   attention output, the MLP's pre-GELU activations, the residual stream) and recomputes
//   the cheap ones in backward: both LayerNorm outputs, and the GELU output when activations
//   are stored in the compute precision (fp32; in bf16 / fp16 the GELU output is kept, since
//   the forward computes it from the unrounded pre-activation and a recomputation from the
//   rounded one would change the result).
// Either way the arithmetic is the same as without checkpointing: losses are bit-identical.
#pragma once

#include <string>
#include <vector>

namespace tessera::models {

enum class RecomputeGranularity { None, Full, Selective };
// Megatron's recompute_method: uniform groups of num_layers blocks, or only the first
// num_layers blocks of the stage (one by one) and the rest kept.
enum class RecomputeMethod { Uniform, Block };

struct RecomputePolicy {
  RecomputeGranularity granularity = RecomputeGranularity::None;
  RecomputeMethod method = RecomputeMethod::Uniform;
  int num_layers = 1;
  // DeepSpeed's number_checkpoints (full, uniform): when > 0, groups are sized so that the
  // stage holds this many checkpoints, overriding num_layers.
  int number_checkpoints = 0;
  // Full only: checkpoints that feed a recomputed group live in host memory (matters on the
  // CUDA backend; on the CPU they are copies in the same memory).
  bool cpu_checkpointing = false;
};

// A run of consecutive blocks, numbered from the stage's first block.
struct BlockGroup {
  int first = 0;
  int count = 0;
  bool recompute = false;  // keeps only its input; forward re-run in backward
  bool operator==(const BlockGroup&) const = default;
};

// The stage's blocks [0, num_blocks) split as the policy says (pure, for tests and estimates).
std::vector<BlockGroup> plan_block_groups(const RecomputePolicy& policy, int num_blocks);

// "none", "full", "selective".
std::string granularity_name(RecomputeGranularity g);
// One line for logs: what is kept and what is recomputed. wide_storage: activations are
// stored in the compute precision (decides selective's GELU).
std::string describe(const RecomputePolicy& policy, const std::vector<BlockGroup>& groups,
                     bool wide_storage);

}  // namespace tessera::models
