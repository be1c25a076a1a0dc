// The GPT-2 model: learned positions, pre-LN blocks with fused QKV attention and a 4x GELU
// MLP, final LayerNorm, lm_head tied to the token embedding. Forward and backward are
// written out layer by layer (no autograd): backward walks the blocks in reverse and calls
// each kernel's backward by hand.
//
// Parameters live in one flat buffer owned by the caller (the engine, or ZeRO), reached
// through ParamAccess; the model owns only its activation arena, sized once for (B, T).
//
// Working precision: GPT<float> runs in f32, or in bf16 / f16 mixed precision (gpt_mixed.cc):
// parameters and gradients reached through ParamAccess are then 16-bit, GEMMs take 16-bit
// operands and accumulate in fp32, and LayerNorm, GELU, attention's softmax and the residual
// stream stay fp32; the activations around the GEMMs are kept in 16 bits. Each layer's
// gradients are formed in an fp32 workspace and added into the 16-bit gradients once per
// micro-batch. GPT<double> (gradient checks) runs in f64 only.
// Layer numbering, the unit of acquire/release/grads_ready: 0 = embeddings (wte, wpe; wte
// is also the head), 1..n_layer = blocks, n_layer + 1 = final LayerNorm.
#pragma once

#include <cstdint>
#include <vector>

#include "models/gpt_config.h"
#include "runtime/core/dtype.h"
#include "runtime/core/params.h"
#include "runtime/core/storage.h"

namespace tessera::models {

// Builds the registry with Hugging Face GPT-2 names ("wte.weight", "h.3.attn.c_attn.weight"),
// shapes in tessera's [out, in] layout, and GPT-2 initialisation: normal(0, 0.02), residual
// projections (attn.c_proj, mlp.c_proj) scaled by 1/sqrt(2 n_layer), LayerNorm 1/0, biases 0.
ParamRegistry build_gpt_registry(const GPTConfig& config);

template <typename T>
class GPT {
 public:
  // dtype: the working precision of parameters and gradients; f32 (the default for float),
  // bf16 or f16 for GPT<float>, f64 for GPT<double>.
  explicit GPT(const GPTConfig& config, DType dtype = dtype_of<T>());

  const GPTConfig& config() const { return config_; }
  DType dtype() const { return dtype_; }
  bool mixed() const { return dtype_ == DType::BF16 || dtype_ == DType::F16; }
  const ParamRegistry& registry() const { return registry_; }
  int num_layers() const { return registry_.num_layers(); }

  // Sizes the activation arena for batches of up to B x T tokens (T <= block_size); later
  // calls with smaller shapes reuse it. Charged to MemCategory::Activations.
  void allocate_activations(int B, int seq_len);
  int64_t activation_bytes() const { return arena_.bytes(); }
  // What allocate_activations(B, T) would allocate, without allocating (for the estimator).
  static int64_t activation_bytes_for(const GPTConfig& config, int B, int seq_len,
                                      DType dtype = dtype_of<T>());

  // Forward over inputs [B,T]; with targets, returns the mean cross-entropy loss over the
  // B*T positions (else 0). Keeps what backward needs.
  double forward(ParamAccess& params, const int32_t* inputs, const int32_t* targets, int B, int seq_len);

  // Forward and backward in one call (the head's loss and gradient are fused). Gradients
  // ACCUMULATE into params.grads(layer) scaled by grad_scale / (B*T): pass
  // 1 / accumulation_steps to average over micro-batches. Returns the mean loss.
  double forward_backward(ParamAccess& params, const int32_t* inputs, const int32_t* targets,
                          int B, int seq_len, double grad_scale);

  // After forward(..., targets = nullptr): logits [V] of position t of batch row b.
  void logits_at(ParamAccess& params, int b, int t, T* out);

  // Keys and values of every position decoded so far, per layer: generation runs one token
  // at a time against it instead of re-running the whole context.
  struct KvCache {
    int length = 0;      // positions filled
    std::vector<T> k, v;  // [n_layer, block_size, C]
    std::vector<T> x, buf, qkv, att, fc;  // one position's activations (scratch)
  };
  KvCache make_kv_cache() const;
  // Appends `token` at position cache.length and writes the logits [V] predicting the next
  // token. Throws when the cache is full (block_size positions). Runs in f32 or f64 only:
  // generation samples from fp32 weights.
  void decode_step(ParamAccess& params, KvCache& cache, int32_t token, T* logits);

 private:
  // Pointers to one block's parameters (or gradients: same layout), in registry order.
  template <typename E>
  struct BlockOf {
    E *ln1w, *ln1b, *qkvw, *qkvb, *attprojw, *attprojb, *ln2w, *ln2b, *fcw, *fcb, *fcprojw,
        *fcprojb;
  };
  using BlockParams = BlockOf<T>;
  // One block's saved activations. In mixed precision the GEMM inputs and outputs that
  // backward reads (LayerNorm outputs, q/k/v, attention output, the MLP's pre- and post-GELU
  // activations) are kept in 16 bits (the *16 pointers) and their fp32 pointers are null; in
  // f32 / f64 it is the other way round. The residual stream stays fp32 in both.
  struct BlockActs {
    T *ln1, *ln1_mean, *ln1_rstd, *qkv, *atty, *lse, *residual2, *ln2, *ln2_mean, *ln2_rstd, *fch,
        *fch_gelu, *residual3;
    uint16_t *ln1_16, *qkv16, *atty16, *ln2_16, *fch16, *fch_gelu16;
  };
  template <typename E>
  BlockOf<E> block_params(E* base) const;
  // One block's activations laid out from `cursor` (in elements of T; null measures the
  // stride), for the arena's capacity.
  BlockActs place_block_acts(T* cursor, int64_t* stride) const;
  BlockActs block_acts(int layer) const;
  void check_shape(int B, int seq_len) const;
  // Sets the arena offsets for B x T; returns the arena's size in elements.
  int64_t layout_activations(int B, int seq_len);
  void forward_body(ParamAccess& params, const int32_t* inputs, int B, int seq_len);
  void block_forward(const BlockParams& p, const BlockActs& a, const T* input, int B, int seq_len);
  void block_backward(const BlockParams& p, BlockParams& g, const BlockActs& a, const T* input,
                      int B, int seq_len);

  // Mixed precision (models/gpt_mixed.cc), used when mixed(); T is float there.
  struct Weights16;
  Weights16 weights16(const void* base);  // 16-bit GEMM weights, fp32 small tensors
  void forward_body16(ParamAccess& params, const int32_t* inputs, int B, int seq_len);
  void block_forward16(const Weights16& w, const BlockActs& a, const float* input, int B,
                       int seq_len);
  // The fused head: returns the summed loss; with backward, dlnf lands in dln and wte's
  // gradient in the layer-0 fp32 workspace.
  double head16(ParamAccess& params, const int32_t* targets, int B, int seq_len, bool backward,
                double grad_scale);
  void backward16(ParamAccess& params, const int32_t* inputs, int B, int seq_len);
  void block_backward16(const Weights16& w, const BlockOf<float>& g, const BlockActs& a,
                        const float* input, int B, int seq_len);
  // dinp += GELU'(widen(inp16)) * dout.
  void gelu_backward16(float* dinp, const uint16_t* inp16, const float* dout, int64_t n);
  // Adds the fp32 workspace's layer gradients into params.grads(layer), then reports them.
  void commit_grads16(ParamAccess& params, int layer, const float* workspace);
  float* arena_f32(int64_t offset) const { return static_cast<float*>(arena_.data()) + offset; }
  uint16_t* arena_16(int64_t offset) const {
    return reinterpret_cast<uint16_t*>(static_cast<T*>(arena_.data()) + offset);
  }

  GPTConfig config_;
  DType dtype_;
  ParamRegistry registry_;
  int arena_B_ = 0, arena_T_ = 0;
  int last_T_ = 0;  // sequence length of the latest forward, for logits_at
  Storage arena_;
  // Offsets (in elements) of each buffer within the arena, for the allocated B x T.
  int64_t encoded_ = 0, blocks_ = 0, block_stride_ = 0, lnf_ = 0, lnf_mean_ = 0, lnf_rstd_ = 0;
  int64_t losses_ = 0, head_scratch_ = 0, dresidual_ = 0, dln_ = 0, dqkv_ = 0, datty_ = 0;
  int64_t dfch_ = 0, dfch_gelu_ = 0, arena_elems_ = 0;
  // Mixed precision only: the final LayerNorm's output and GEMM operands in 16 bits, the
  // head's 16-bit dlogits, the fp32 gradient workspaces (one block or the final LayerNorm;
  // layer 0, open all of backward) and a block's small parameters widened to fp32.
  int64_t lnf16_ = 0, scratch16_ = 0, head_scratch16_ = 0, grad_ws_ = 0, grad_ws0_ = 0;
  int64_t small_f32_ = 0;
};

}  // namespace tessera::models
