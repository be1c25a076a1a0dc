// The GPT-2 model: learned positions, pre-LN blocks with fused QKV attention and a 4x GELU
// MLP, final LayerNorm, lm_head tied to the token embedding. Forward and backward are
// written out layer by layer (no autograd): backward walks the blocks in reverse and calls
// each kernel's backward by hand.
//
// Parameters live in one flat buffer owned by the caller (the engine, or ZeRO), reached
// through ParamAccess; the model owns only its activation arena, sized once for (B, T).
// Layer numbering, the unit of acquire/release/grads_ready: 0 = embeddings (wte, wpe; wte
// is also the head), 1..n_layer = blocks, n_layer + 1 = final LayerNorm.
#pragma once

#include <cstdint>
#include <vector>

#include "models/gpt_config.h"
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
  explicit GPT(const GPTConfig& config);

  const GPTConfig& config() const { return config_; }
  const ParamRegistry& registry() const { return registry_; }
  int num_layers() const { return registry_.num_layers(); }

  // Sizes the activation arena for batches of up to B x T tokens (T <= block_size); later
  // calls with smaller shapes reuse it. Charged to MemCategory::Activations.
  void allocate_activations(int B, int seq_len);
  int64_t activation_bytes() const { return arena_.bytes(); }
  // What allocate_activations(B, T) would allocate, without allocating (for the estimator).
  static int64_t activation_bytes_for(const GPTConfig& config, int B, int seq_len);

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
  // token. Throws when the cache is full (block_size positions).
  void decode_step(ParamAccess& params, KvCache& cache, int32_t token, T* logits);

 private:
  struct BlockParams;
  struct BlockActs;
  BlockParams block_params(T* base) const;
  BlockActs block_acts(int layer) const;
  void check_shape(int B, int seq_len) const;
  // Sets the arena offsets for B x T; returns the arena's size in elements.
  int64_t layout_activations(int B, int seq_len);
  void forward_body(ParamAccess& params, const int32_t* inputs, int B, int seq_len);
  void block_forward(const BlockParams& p, const BlockActs& a, const T* input, int B, int seq_len);
  void block_backward(const BlockParams& p, BlockParams& g, const BlockActs& a, const T* input,
                      int B, int seq_len);

  GPTConfig config_;
  ParamRegistry registry_;
  int arena_B_ = 0, arena_T_ = 0;
  int last_T_ = 0;  // sequence length of the latest forward, for logits_at
  Storage arena_;
  // Offsets (in elements) of each buffer within the arena, for the allocated B x T.
  int64_t encoded_ = 0, blocks_ = 0, block_stride_ = 0, lnf_ = 0, lnf_mean_ = 0, lnf_rstd_ = 0;
  int64_t losses_ = 0, head_scratch_ = 0, dresidual_ = 0, dln_ = 0, dqkv_ = 0, datty_ = 0;
  int64_t dfch_ = 0, dfch_gelu_ = 0, arena_elems_ = 0;
};

}  // namespace tessera::models
