// The GPT-2 model: learned positions, pre-LN blocks with fused QKV attention and a 4x GELU
// MLP, final LayerNorm, lm_head tied to the token embedding. Forward and backward are
// written out layer by layer (no autograd) once, in models/stage.cc, over an ops table chosen
// by device and precision (runtime/kernels/ops.h); GPT is that graph as one stage holding every
// layer, with one micro-batch slot, plus token-by-token decoding for generation.
//
// Parameters live in one flat buffer owned by the caller (the engine, or ZeRO), reached
// through ParamAccess; the model owns only its activations.
//
// Working precision: f32, or bf16 / f16 mixed precision for GPT<float> (parameters, gradients
// and the GEMM operands kept for backward in 16 bits, GEMMs accumulating in fp32, LayerNorm,
// GELU, attention's softmax and the residual stream in fp32, each layer's gradients formed in
// an fp32 workspace and added into the 16-bit gradients once per micro-batch); f64 for
// GPT<double> (gradient checks).
// Layer numbering, the unit of acquire/release/grads_ready: models/gpt_layers.h (the
// embeddings, whole or with wte in chunks; four layers per block; ln_f).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "models/gpt_config.h"
#include "models/stage.h"
#include "runtime/core/dtype.h"
#include "runtime/core/params.h"
#include "runtime/core/storage.h"
#include "runtime/kernels/ops.h"

namespace tessera::models {

// Builds the registry with Hugging Face GPT-2 names ("wte.weight", "h.3.attn.c_attn.weight"),
// shapes in tessera's [out, in] layout, and GPT-2 initialisation: normal(0, 0.02), residual
// projections (attn.c_proj, mlp.c_proj) scaled by 1/sqrt(2 n_layer), LayerNorm 1/0, biases 0.
// wte_chunks > 1 splits the word embedding by rows over that many layers (GptLayers);
// head_copy adds the head's own copy of it, lm_head.weight, after ln_f, drawn as wte's twin
// (the same initial values; loading a file fills it from wte.weight), where Megatron's
// embedding group copies the values over at start-up.
// part: a pipeline rank's registry (needs head_copy): only the layers of its chunks hold
// parameters, the others are empty, so layer numbers and every parameter's initial values are
// the whole model's.
// tp: this rank's part of every parameter (TpSplit / TpSlice): c_attn split by heads (each
// rank its heads' rows of q, k and v), mlp.c_fc by rows, attn.c_proj and mlp.c_proj by
// columns (their biases whole, added once after the reduction), wte by vocabulary rows of the
// padded vocabulary (padded_vocab); LayerNorms and wpe whole on every rank.
ParamRegistry build_gpt_registry(const GPTConfig& config, int wte_chunks = 1,
                                 bool head_copy = false, TpLayout tp = {},
                                 const PipelinePart& part = {});
// Throws, naming the numbers, unless tp_size divides n_head.
void check_tensor_parallel(const GPTConfig& config, int tp_size);

template <typename T>
class GPT {
 public:
  // dtype: the working precision of parameters and gradients; f32 (the default for float),
  // bf16 or f16 for GPT<float>, f64 for GPT<double>. device: where the graph runs.
  // wte_chunks: the word embedding (and the head) in that many layers, so that ZeRO-3 gathers
  // and reduces it a chunk at a time (GptLayers); the results agree with one layer's to
  // rounding, not bit for bit (the head's softmax is summed chunk by chunk).
  // tp: this rank's part of a tensor-parallel model (the stage then needs its group:
  // stage().set_tensor_parallel).
  // part: a pipeline rank's blocks, one stage per model chunk (with a head copy); forward,
  // forward_backward, logits_at and decoding then refuse (the engine drives the stages).
  explicit GPT(const GPTConfig& config, DType dtype = dtype_of<T>(), Device device = Device::cpu(),
               int wte_chunks = 1, TpLayout tp = {}, PipelinePart part = {});

  const GPTConfig& config() const { return config_; }
  DType dtype() const { return dtype_; }
  bool mixed() const { return dtype_ == DType::BF16 || dtype_ == DType::F16; }
  const ParamRegistry& registry() const { return registry_; }
  const GptLayers& layers() const { return layers_; }
  int num_layers() const { return registry_.num_layers(); }
  kernels::Ops<T>& ops() { return *ops_; }
  const PipelinePart& part() const { return part_; }
  // The first (the whole model's) stage, or model chunk `chunk`'s.
  Stage<T>& stage(int chunk = 0) { return *stages_.at(chunk); }
  const Stage<T>& stage(int chunk = 0) const { return *stages_.at(chunk); }
  int num_stages() const { return static_cast<int>(stages_.size()); }

  // Sizes the activations for batches of up to B x T tokens (T <= block_size); later calls
  // with smaller shapes reuse them. Charged to MemCategory::Activations.
  void allocate_activations(int B, int seq_len) { stage().allocate(1, B, seq_len); }
  int64_t activation_bytes() const {
    int64_t bytes = 0;
    for (const auto& s : stages_) bytes += s->activation_bytes();
    return bytes;
  }
  // What allocate_activations(B, T) would allocate, without allocating (for the estimator).
  static int64_t activation_bytes_for(const GPTConfig& config, int B, int seq_len,
                                      DType dtype = dtype_of<T>(),
                                      const RecomputePolicy& recompute = {}, int wte_chunks = 1,
                                      TpLayout tp = {});

  // Forward over inputs [B,T]; with targets, returns the mean cross-entropy loss over the
  // B*T positions (else 0). Keeps what backward needs.
  double forward(ParamAccess& params, const int32_t* inputs, const int32_t* targets, int B, int seq_len);

  // Forward and backward in one call (the head's loss and gradient are fused). Gradients
  // ACCUMULATE into params.grads(layer) scaled by grad_scale / (B*T): pass
  // 1 / accumulation_steps to average over micro-batches. Returns the mean loss.
  double forward_backward(ParamAccess& params, const int32_t* inputs, const int32_t* targets,
                          int B, int seq_len, double grad_scale);

  // After forward(..., targets = nullptr): logits [V] of position t of batch row b.
  void logits_at(ParamAccess& params, int b, int t, T* out) {
    whole_model("logits_at");
    stage().logits_at(params, 0, b, t, last_T_, out);
  }

  // Keys and values of every position decoded so far, per layer: generation runs one token
  // at a time against it instead of re-running the whole context.
  // One tracked allocation (category activations), carved into:
  struct KvCache {
    int length = 0;  // positions filled
    Storage memory;
    T *k = nullptr, *v = nullptr;  // [n_layer, block_size, C]
    T *x = nullptr, *buf = nullptr, *qkv = nullptr, *att = nullptr, *fc = nullptr;  // scratch
  };
  KvCache make_kv_cache() const;
  // Appends `token` at position cache.length and writes the logits [V] predicting the next
  // token. Throws when the cache is full (block_size positions). Runs in f32 or f64 on the
  // CPU only: generation samples from fp32 weights.
  void decode_step(ParamAccess& params, KvCache& cache, int32_t token, T* logits);

 private:
  void whole_model(const char* what) const;

  GPTConfig config_;
  DType dtype_;
  PipelinePart part_;
  GptLayers layers_;
  ParamRegistry registry_;
  std::unique_ptr<kernels::Ops<T>> ops_;
  std::vector<std::unique_ptr<Stage<T>>> stages_;
  int last_T_ = 0;  // sequence length of the latest forward, for logits_at
};

}  // namespace tessera::models
