// The GPT graph, written once: a pipeline stage owning the model's layers [first, last),
// running every precision and device through an ops table (runtime/kernels/ops.h).
//
// Layers are numbered as models/gpt_layers.h says (the embeddings, four per block, ln_f). The
// first stage (first == 0) adds the token and position embeddings; the last (last ==
// num_layers) adds the final LayerNorm, the head and the loss. Stages start and end at a
// block. A whole model is one stage holding every layer.
//
// The head is tied to the word embedding. Whole (one layer), the fused head forms wte's
// gradient and it stays open until the embedding adds its rows at the end of backward. In
// chunks (ZeRO-3), the head runs the cross-entropy in two passes over the chunks (the rows'
// softmax statistics, then each chunk's gradient, its logits recomputed) and each chunk's
// gradient is reported at once; the embedding reports its rows again at the end. With a head
// copy (GptLayers::head_copy) the head reads and writes its own layers and a last stage need
// not hold the embedding; the owner sums the tied gradients (GptLayers::tied_layers).
//
// Activations are kept per (micro-batch slot, layer): a stage can hold `slots` micro-batches
// in flight (a pipeline schedule's forwards ahead of their backwards). Backward's scratch, the
// gradient workspaces and the head's logits chunk are shared by all slots.
//
// Tensor parallelism (layers().tp, Megatron's layout): each rank holds its heads' part of
// c_attn, its rows of mlp.c_fc, its columns of attn.c_proj and mlp.c_proj and its slice of the
// vocabulary. The conjugate operators (parallel/tp/conjugate.h) sit at the region edges: the
// row-parallel outputs (and the embedding) are summed over the group, their biases added once
// after; the column-parallel input gradients are summed in backward while the weight-gradient
// GEMM runs; the head's cross-entropy merges each rank's row statistics (max, then sums and
// target logits) and never forms a row's whole logits. With sequence parallelism the
// LayerNorm and residual regions hold rows / t tokens (this rank's block): all-gathers before
// the column-parallel GEMMs and reduce-scatters after the row-parallel ones replace the sums,
// and the LayerNorms' (and ln_f's) gradients are summed over the group.
//
// Activation checkpointing (models/recompute.h) is the stage's policy: blocks are split into
// groups, and a recomputed group keeps only its input per slot and re-runs its forward, into a
// working set shared by all slots, just before its backward.
//
// A block's forward and backward (block_forward / block_backward in stage.cc) are where a
// kernel's backward is called; the stored (16-bit) and compute (fp32) sides of a buffer meet
// only in the table's target / save / view.
#pragma once

#include <cstdint>
#include <vector>

#include "models/gpt_config.h"
#include "models/gpt_layers.h"
#include "models/recompute.h"
#include "parallel/comm/process_group.h"
#include "runtime/core/params.h"
#include "runtime/core/storage.h"
#include "runtime/kernels/ops.h"

namespace tessera::models {

template <typename T>
class Stage {
 public:
  // A stage holding the head must hold the word embedding it is tied to (layer 0), unless
  // the layers give the head its own copy (GptLayers::head_copy).
  Stage(const GPTConfig& config, const GptLayers& layers, const ParamRegistry& registry,
        kernels::Ops<T>& ops, int first, int last);

  int first() const { return first_; }
  int last() const { return last_; }
  bool has_embedding() const { return first_ == 0; }
  bool has_head() const { return last_ == layers_.num_layers(); }
  const GptLayers& layers() const { return layers_; }

  // The tensor-parallel group (layers().tp.size ranks, this one at layers().tp.rank); needed
  // before the first forward when layers().tp is active. f32 only (T = float).
  void set_tensor_parallel(parallel::ProcessGroup* group);
  // Rows of the residual stream this rank holds for B x seq_len tokens: all of them, or its
  // block of B seq_len / t with sequence parallelism.
  int64_t residual_rows(int B, int seq_len) const;

  // Activation checkpointing; takes effect at the next allocate().
  void set_recompute(const RecomputePolicy& policy);
  const RecomputePolicy& recompute() const { return recompute_; }
  const std::vector<BlockGroup>& block_groups() const { return groups_; }

  // Sizes the activations for `slots` micro-batches of up to B x seq_len tokens
  // (seq_len <= block_size); charged to MemCategory::Activations on the table's device (host
  // checkpoints under cpu_checkpointing on a device too).
  void allocate(int slots, int B, int seq_len);
  int64_t activation_bytes() const {
    return static_cast<int64_t>(arena_.bytes() + host_checkpoints_.bytes());
  }
  // What allocate(slots, B, seq_len) would take, without allocating.
  int64_t activation_bytes_for(int slots, int B, int seq_len) const;

  // Forward of micro-batch `slot`: from `tokens` [B, T] on the first stage, else from
  // input(slot), which the caller fills with the previous stage's output.
  void forward(ParamAccess& params, int slot, const int32_t* tokens, int B, int seq_len);
  // Last stage, after forward(slot): the summed cross-entropy over the B x T targets. With
  // backward, also the head's gradients (scaled by grad_scale / (B T)): the final LayerNorm
  // output's in backward's scratch, wte's into layer 0's gradients.
  double head(ParamAccess& params, int slot, const int32_t* targets, int B, int seq_len,
              bool backward, double grad_scale);
  // Backward of micro-batch `slot`, accumulating into params.grads(layer) and reporting each
  // layer with grads_ready. On the last stage head(..., backward = true) runs first; on the
  // others the caller fills output_grad() first. tokens: the first stage's inputs.
  void backward(ParamAccess& params, int slot, const int32_t* tokens, int B, int seq_len);
  // Logits [V] of position (b, t) of `slot` after forward (last stage).
  void logits_at(ParamAccess& params, int slot, int b, int t, int seq_len, T* out);

  // [B, T, C] entering the stage (the embeddings' output on the first stage); with sequence
  // parallelism, this rank's residual_rows of it (and so output() and the gradients).
  T* input(int slot);
  // [B, T, C] leaving a stage without the head: its last block's output.
  const T* output(int slot);
  // dL/d(output), written by the caller before backward(); after backward, dL/d(input).
  // Shared by all slots: valid until the next backward.
  T* output_grad() { return buf(layout_.dres); }
  const T* input_grad() { return buf(layout_.dres); }

 private:
  // One layer of a block (gpt_layers.h's BlockPart): its GEMM matrix as stored, its bias and
  // (kAttentionIn, kMlpIn) the LayerNorm before it in T.
  struct PartWeights {
    const void* matrix;
    const T *bias, *ln_weight, *ln_bias;
  };
  // Its gradients in T, in registry order.
  struct PartGrads {
    T *matrix, *bias, *ln_weight, *ln_bias;
  };
  // One block's saved activations for one slot: the GEMM operands as stored (void*), the
  // LayerNorm statistics, attention's log-sum-exp and the residual stream in T. Under selective
  // recomputation ln1 / ln2 (and fch_gelu) point at shared scratch refilled in backward.
  struct BlockActs {
    void *ln1, *qkv, *atty, *ln2, *fch, *fch_gelu;
    T *ln1_mean, *ln1_rstd, *lse, *residual2, *ln2_mean, *ln2_rstd, *residual3;
    bool recompute_ln = false, recompute_gelu = false;
  };
  // Which of a block's activations live in shared scratch instead of the block's own space.
  struct Dropped {
    bool ln = false, gelu = false;
  };
  // Offsets, in elements of T, within the activation arena.
  struct Layout {
    int slots = 0, B = 0, seq = 0;
    int64_t slot_stride = 0;  // one slot's saved activations
    // Within a slot: the stage input, the kept blocks, each recomputed group's output kept
    // on the device (-1: none, or on the host), the final LayerNorm's.
    int64_t input = 0, blocks = 0, block_stride = 0, lnf = 0, lnf_mean = 0, lnf_rstd = 0,
            losses = 0;
    std::vector<int64_t> group_out;
    // Host checkpoints (cpu_checkpointing): offsets within one slot's part of that buffer.
    std::vector<int64_t> group_out_host;
    int64_t host_slot_stride = 0;
    // Shared by all slots: backward's scratch, head scratch; a recomputed group's working set
    // and the device copy of a host checkpoint; selective recomputation's scratch; with staged
    // gradients, the fp32 final LayerNorm output, rounded GEMM output gradients, the gradient
    // workspaces (a block, layer 0) and a block's small parameters widened.
    int64_t shared = 0;
    int64_t dres = 0, dln = 0, dqkv = 0, datty = 0, dfch = 0, dfch_gelu = 0, head_scratch = 0;
    int64_t ce_stats = 0;  // chunked head: per row the max / log-sum-exp, sum, target logit
                           // (and, vocabulary-parallel, the group's max)
    // Tensor parallelism: a [B T, C] buffer in T (sequence parallelism: a row-parallel
    // output before its reduce-scatter, a gathered gradient, the embedding before its
    // scatter), the gathered LayerNorm output (stored) and a LayerNorm's partial gradients.
    int64_t tp_full = 0, tp_gathered = 0, tp_ln_grad = 0;
    int64_t recompute_blocks = 0, full_block_stride = 0, boundary = 0, sel_ln = 0, sel_gelu = 0;
    int64_t lnf_wide = 0, dout16 = 0, head_scratch16 = 0, grad_ws = 0, grad_ws0 = 0, small = 0;
    int64_t total = 0;
  };

  Layout plan(int slots, int B, int seq_len) const;
  // Lays one block's activations out from `base` for a B x T capacity, without the dropped
  // ones; returns the stride.
  int64_t place_block(T* base, int B, int seq_len, Dropped dropped, BlockActs* out) const;
  Dropped selective_drops() const;
  // A kept block's activations (`layer` in a group that is not recomputed).
  BlockActs block_acts(int slot, int block);
  // The j-th block of the recomputation working set.
  BlockActs recompute_acts(int j);
  // The input of group g for `slot` (backward: a host checkpoint is brought back first).
  const T* group_input(int slot, int g);
  // Where the block's input lives for its backward (kept blocks).
  const T* block_input(int slot, int block);
  // Group g's forward from `input`; with keep_output, a recomputed group's output is copied
  // where it outlives the working set. Returns where the output is.
  const T* forward_group(ParamAccess& params, int slot, int g, const T* input, int B, int seq_len,
                         bool keep_output);
  int num_blocks() const { return last_block() - first_block(); }
  int first_block() const;  // the stage's first block (0-based block index)
  int last_block() const;   // one past its last block
  void check_batch(int slot, int B, int seq_len) const;
  T* buf(int64_t offset) const { return static_cast<T*>(arena_.data()) + offset; }
  T* slot_buf(int slot, int64_t offset) const {
    return buf(int64_t{slot} * layout_.slot_stride + offset);
  }
  // Stored elements of n values of the storage dtype, in elements of T (rounded up).
  int64_t stored_elems(int64_t n) const;

  // Element offsets of a block layer's tensors from the layer's first element (registry
  // order; -1: none), and where its small tensors are widened within layout_.small.
  struct PartOffsets {
    int64_t ln_weight, ln_bias, matrix, bias, small;
  };
  PartOffsets part_offsets(BlockPart part) const;
  int64_t part_bias_size(BlockPart part) const;
  // A block layer's parameters, valid until release_part; its gradients (open_grads).
  PartWeights acquire_part(ParamAccess& params, int block, BlockPart part);
  void release_part(ParamAccess& params, int block, BlockPart part);
  PartGrads open_part_grads(ParamAccess& params, int block, BlockPart part);
  void close_part_grads(ParamAccess& params, int block, BlockPart part);
  // Where backward accumulates `layer`'s gradients: params.grads(layer) itself, or a zeroed
  // T workspace when the table stages gradients. close_grads adds the workspace in and
  // reports the layer.
  T* open_grads(ParamAccess& params, int layer, T* workspace);
  void close_grads(ParamAccess& params, int layer, T* workspace);
  // Each gathers its layers one GEMM at a time; backward reports each layer's gradients.
  void block_forward(ParamAccess& params, int block, const BlockActs& a, const T* input, int B,
                     int seq_len);
  void block_backward(ParamAccess& params, int block, const BlockActs& a, const T* input, int B,
                      int seq_len);
  // Tensor parallelism (conjugate.h), each waiting for its collective unless it returns one.
  bool tp() const { return layers_.tp.active(); }
  bool sp() const { return tp() && layers_.tp.sequence_parallel; }
  void tp_sum(T* x, int64_t n);
  // A LayerNorm output kept in `stored` (this rank's rows): the whole B T rows the GEMM reads,
  // gathered under sequence parallelism.
  const void* gather_ln(const void* stored, int B, int seq_len);
  // The residual stream's gradient over all B T rows (gathered under sequence parallelism).
  const T* gather_residual_grad(const T* dres, int B, int seq_len);
  // out (this rank's residual rows) = inp [B T, in] W^T + bias, W this rank's columns.
  void row_parallel_forward(T* out, const void* inp, const PartWeights& w, int B, int seq_len,
                            int64_t in);
  // dln = d(inp) for this rank's residual rows of a column-parallel linear [B T, C] ->
  // [B T, out]: the partial input gradients summed over the group (reduce-scattered under
  // sequence parallelism) while the weight gradients are formed. Returns where it is.
  const T* column_parallel_backward(const PartGrads& g, const PartWeights& w, const T* dout,
                                    const void* inp, int B, int seq_len, int64_t out);
  // A LayerNorm's backward over this rank's rows; its parameter gradients summed over the
  // group under sequence parallelism.
  void layernorm_backward_tp(T* dres, T* dweight, T* dbias, const T* dln, const T* inp,
                             const T* weight, const T* mean, const T* rstd, int64_t rows);
  void embedding_forward(ParamAccess& params, T* x, const int32_t* tokens, int B, int seq_len);
  // Adds the embeddings' gradients from dL/d(input) (in backward's dres) and reports them.
  void embedding_backward(ParamAccess& params, const int32_t* tokens, int B, int seq_len);
  double chunked_head(ParamAccess& params, int slot, const int32_t* targets, int B, int seq_len,
                      bool backward, double grad_scale);

  const GPTConfig& config_;
  GptLayers layers_;
  const ParamRegistry& registry_;
  kernels::Ops<T>& ops_;
  int first_, last_;
  RecomputePolicy recompute_;
  std::vector<BlockGroup> groups_;  // the stage's blocks, as recompute_ splits them
  std::vector<int> kept_index_;     // per block: its index among the kept blocks (-1: none)
  Layout layout_;
  Storage arena_;
  Storage host_checkpoints_;  // cpu_checkpointing
  bool ws0_open_ = false;  // layer 0's workspace holds the head's wte gradient (tied in place)
  bool head_ran_ = false;  // head(..., backward = true) ran since the last backward
  parallel::ProcessGroup* tp_group_ = nullptr;
};

}  // namespace tessera::models
