// GPT-2 forward and backward in bf16 / f16 mixed precision (see gpt.h): the same graph as
// gpt.cc, with 16-bit parameters, GEMM operands and saved activations, fp32 arithmetic
// everywhere else, and gradients formed per layer in fp32 before they are added into the
// 16-bit gradients.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "models/gpt.h"
#include "runtime/core/error.h"
#include "runtime/kernels/cpu_kernels.h"
#include "runtime/kernels/cpu_mixed.h"

namespace tessera::models {

namespace k = tessera::kernels::cpu;

template <typename T>
struct GPT<T>::Weights16 {
  BlockOf<const uint16_t> w;  // the layer's 16-bit tensors, as stored
  BlockOf<float> f32;         // LayerNorm gains and biases widened to fp32 (matrices null)
};

template <typename T>
typename GPT<T>::Weights16 GPT<T>::weights16(const void* base) {
  const int64_t C = config_.n_embd;
  Weights16 out{};
  out.w = block_params(static_cast<const uint16_t*>(base));
  float* cur = arena_f32(small_f32_);  // 13 C floats
  auto widen = [&](const uint16_t* src, int64_t n) {
    k::from_16(dtype_, src, cur, n);
    float* at = cur;
    cur += n;
    return at;
  };
  const BlockOf<const uint16_t>& w = out.w;
  out.f32.ln1w = widen(w.ln1w, C);
  out.f32.ln1b = widen(w.ln1b, C);
  out.f32.qkvb = widen(w.qkvb, 3 * C);
  out.f32.attprojb = widen(w.attprojb, C);
  out.f32.ln2w = widen(w.ln2w, C);
  out.f32.ln2b = widen(w.ln2b, C);
  out.f32.fcb = widen(w.fcb, 4 * C);
  out.f32.fcprojb = widen(w.fcprojb, C);
  return out;
}

template <typename T>
void GPT<T>::block_forward16(const Weights16& w, const BlockActs& a, const float* input, int B,
                             int T_) {
  const int64_t BT = int64_t{B} * T_, C = config_.n_embd;
  const DType dt = dtype_;
  // fp32 outputs on their way to 16 bits pass through backward's scratch buffers.
  float* out = arena_f32(dln_);  // [BT, C]: LayerNorm, attention
  float* qkv = arena_f32(dqkv_);
  float* fch = arena_f32(dfch_);
  float* gelu = arena_f32(dfch_gelu_);
  const BlockOf<float>& s = w.f32;
  k::layernorm_forward(out, a.ln1_mean, a.ln1_rstd, input, s.ln1w, s.ln1b, BT, C);
  k::to_16(dt, out, a.ln1_16, BT * C);
  k::matmul_forward16(dt, qkv, a.ln1_16, w.w.qkvw, s.qkvb, BT, C, 3 * C);
  // Attention reads q, k, v as backward will: rounded to 16 bits, so the log-sum-exp it saves
  // matches the probabilities backward recomputes.
  k::to_16(dt, qkv, a.qkv16, 3 * BT * C);
  k::from_16(dt, a.qkv16, qkv, 3 * BT * C);
  k::attention_forward(out, a.lse, qkv, B, T_, static_cast<int>(C), config_.n_head);
  k::to_16(dt, out, a.atty16, BT * C);
  k::matmul_forward16(dt, a.residual2, a.atty16, w.w.attprojw, s.attprojb, BT, C, C);
  k::residual_forward(a.residual2, a.residual2, input, BT * C);
  k::layernorm_forward(out, a.ln2_mean, a.ln2_rstd, a.residual2, s.ln2w, s.ln2b, BT, C);
  k::to_16(dt, out, a.ln2_16, BT * C);
  k::matmul_forward16(dt, fch, a.ln2_16, w.w.fcw, s.fcb, BT, C, 4 * C);
  k::to_16(dt, fch, a.fch16, 4 * BT * C);
  k::gelu_forward(gelu, fch, 4 * BT * C);
  k::to_16(dt, gelu, a.fch_gelu16, 4 * BT * C);
  k::matmul_forward16(dt, a.residual3, a.fch_gelu16, w.w.fcprojw, s.fcprojb, BT, 4 * C, C);
  k::residual_forward(a.residual3, a.residual3, a.residual2, BT * C);
}

template <typename T>
void GPT<T>::forward_body16(ParamAccess& params, const int32_t* inputs, int B, int T_) {
  last_T_ = T_;
  const int64_t BT = int64_t{B} * T_, C = config_.n_embd, V = config_.vocab_size;
  const int L = config_.n_layer;
  float* encoded = arena_f32(encoded_);
  {
    const auto* emb = static_cast<const uint16_t*>(params.acquire(0));
    k::embedding_forward16(dtype_, encoded, inputs, emb, emb + V * C, B, T_, static_cast<int>(C));
    params.release(0);
  }
  const float* x = encoded;
  for (int l = 0; l < L; ++l) {
    const Weights16 w = weights16(params.acquire(l + 1));
    const BlockActs a = block_acts(l);
    block_forward16(w, a, x, B, T_);
    params.release(l + 1);
    x = a.residual3;
  }
  const auto* lnf16 = static_cast<const uint16_t*>(params.acquire(L + 1));
  float* lnf_w = arena_f32(small_f32_);
  k::from_16(dtype_, lnf16, lnf_w, 2 * C);
  params.release(L + 1);
  float* lnf = arena_f32(lnf_);
  k::layernorm_forward(lnf, arena_f32(lnf_mean_), arena_f32(lnf_rstd_), x, lnf_w, lnf_w + C, BT, C);
  k::to_16(dtype_, lnf, arena_16(lnf16_), BT * C);
}

template <typename T>
double GPT<T>::head16(ParamAccess& params, const int32_t* targets, int B, int T_, bool backward,
                      double grad_scale) {
  const int64_t BT = int64_t{B} * T_, C = config_.n_embd, V = config_.vocab_size;
  float* dlnf = nullptr;
  float* dwte = nullptr;
  if (backward) {
    dlnf = arena_f32(dln_);
    dwte = arena_f32(grad_ws0_);
    std::memset(dlnf, 0, sizeof(float) * BT * C);
    // Layer 0's workspace stays open all of backward: the head adds wte's gradient now, the
    // embedding its rows at the end.
    std::memset(dwte, 0, sizeof(float) * registry_.layer(0).numel());
  }
  const auto* wte = static_cast<const uint16_t*>(params.acquire(0));
  const double loss_sum = k::lm_head_cross_entropy16(
      dtype_, dlnf, dwte, arena_f32(losses_), arena_16(lnf16_), wte, targets, BT, C, V,
      static_cast<float>(grad_scale / static_cast<double>(BT)), arena_f32(head_scratch_),
      arena_16(head_scratch16_));
  params.release(0);
  return loss_sum;
}

template <typename T>
void GPT<T>::block_backward16(const Weights16& w, const BlockOf<float>& g, const BlockActs& a,
                              const float* input, int B, int T_) {
  const int64_t BT = int64_t{B} * T_, C = config_.n_embd;
  const DType dt = dtype_;
  float* dres = arena_f32(dresidual_);  // dL/d(block output) on entry, dL/d(input) on exit
  float* dln = arena_f32(dln_);
  float* dqkv = arena_f32(dqkv_);
  float* datty = arena_f32(datty_);
  float* dfch = arena_f32(dfch_);
  float* dfch_gelu = arena_f32(dfch_gelu_);
  uint16_t* dout16 = arena_16(scratch16_);  // a GEMM's output gradient, rounded
  const BlockOf<float>& s = w.f32;
  // MLP branch.
  k::to_16(dt, dres, dout16, BT * C);
  std::memset(dfch_gelu, 0, sizeof(float) * 4 * BT * C);
  k::matmul_backward16(dt, dfch_gelu, g.fcprojw, g.fcprojb, dout16, dres, a.fch_gelu16,
                       w.w.fcprojw, BT, 4 * C, C);
  std::memset(dfch, 0, sizeof(float) * 4 * BT * C);
  gelu_backward16(dfch, a.fch16, dfch_gelu, 4 * BT * C);
  k::to_16(dt, dfch, dout16, 4 * BT * C);
  std::memset(dln, 0, sizeof(float) * BT * C);
  k::matmul_backward16(dt, dln, g.fcw, g.fcb, dout16, dfch, a.ln2_16, w.w.fcw, BT, C, 4 * C);
  k::layernorm_backward(dres, g.ln2w, g.ln2b, dln, a.residual2, s.ln2w, a.ln2_mean, a.ln2_rstd,
                        BT, C);
  // Attention branch.
  k::to_16(dt, dres, dout16, BT * C);
  std::memset(datty, 0, sizeof(float) * BT * C);
  k::matmul_backward16(dt, datty, g.attprojw, g.attprojb, dout16, dres, a.atty16, w.w.attprojw,
                       BT, C, C);
  // Attention's saved inputs and output, widened into buffers free until further down.
  float* atty = dln;
  float* qkv = dfch;
  k::from_16(dt, a.atty16, atty, BT * C);
  k::from_16(dt, a.qkv16, qkv, 3 * BT * C);
  std::memset(dqkv, 0, sizeof(float) * 3 * BT * C);
  k::attention_backward(dqkv, datty, qkv, atty, a.lse, B, T_, static_cast<int>(C),
                        config_.n_head);
  k::to_16(dt, dqkv, dout16, 3 * BT * C);
  std::memset(dln, 0, sizeof(float) * BT * C);
  k::matmul_backward16(dt, dln, g.qkvw, g.qkvb, dout16, dqkv, a.ln1_16, w.w.qkvw, BT, C, 3 * C);
  k::layernorm_backward(dres, g.ln1w, g.ln1b, dln, input, s.ln1w, a.ln1_mean, a.ln1_rstd, BT, C);
}

template <typename T>
void GPT<T>::gelu_backward16(float* dinp, const uint16_t* inp16, const float* dout, int64_t n) {
  // Widen the saved pre-GELU activations a block at a time: no second [4 BT C] fp32 buffer.
  constexpr int64_t kBlock = int64_t{1} << 18;
  std::vector<float> inp(static_cast<size_t>(std::min(n, kBlock)));
  for (int64_t at = 0; at < n; at += kBlock) {
    const int64_t len = std::min(kBlock, n - at);
    k::from_16(dtype_, inp16 + at, inp.data(), len);
    k::gelu_backward(dinp + at, inp.data(), dout + at, len);
  }
}

template <typename T>
void GPT<T>::commit_grads16(ParamAccess& params, int layer, const float* workspace) {
  k::accumulate_16(dtype_, static_cast<uint16_t*>(params.grads(layer)), workspace,
                   registry_.layer(layer).numel());
  params.grads_ready(layer);
}

template <typename T>
void GPT<T>::backward16(ParamAccess& params, const int32_t* inputs, int B, int T_) {
  const int64_t BT = int64_t{B} * T_, C = config_.n_embd, V = config_.vocab_size;
  const int L = config_.n_layer;
  float* dres = arena_f32(dresidual_);
  float* ws = arena_f32(grad_ws_);
  const float* last = L > 0 ? block_acts(L - 1).residual3 : arena_f32(encoded_);
  {
    const auto* lnf16 = static_cast<const uint16_t*>(params.acquire(L + 1));
    float* lnf_w = arena_f32(small_f32_);
    k::from_16(dtype_, lnf16, lnf_w, 2 * C);
    params.release(L + 1);
    std::memset(ws, 0, sizeof(float) * 2 * C);
    std::memset(dres, 0, sizeof(float) * BT * C);
    k::layernorm_backward(dres, ws, ws + C, arena_f32(dln_), last, lnf_w, arena_f32(lnf_mean_),
                          arena_f32(lnf_rstd_), BT, C);
    commit_grads16(params, L + 1, ws);
  }
  for (int l = L - 1; l >= 0; --l) {
    const Weights16 w = weights16(params.acquire(l + 1));
    std::memset(ws, 0, sizeof(float) * registry_.layer(l + 1).numel());
    const float* input = l > 0 ? block_acts(l - 1).residual3 : arena_f32(encoded_);
    block_backward16(w, block_params(ws), block_acts(l), input, B, T_);
    params.release(l + 1);
    commit_grads16(params, l + 1, ws);
  }
  float* ws0 = arena_f32(grad_ws0_);
  params.acquire(0);
  k::embedding_backward(ws0, ws0 + V * C, dres, inputs, B, T_, static_cast<int>(C));
  params.release(0);
  commit_grads16(params, 0, ws0);
}

// GPT<double> never runs in 16 bits: gpt.cc calls these for float only.
template void GPT<float>::forward_body16(ParamAccess&, const int32_t*, int, int);
template double GPT<float>::head16(ParamAccess&, const int32_t*, int, int, bool, double);
template void GPT<float>::backward16(ParamAccess&, const int32_t*, int, int);

}  // namespace tessera::models
