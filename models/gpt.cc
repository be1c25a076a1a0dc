#include "models/gpt.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include <fmt/format.h>

#include "runtime/core/error.h"
#include "runtime/kernels/cpu_kernels.h"
#include "runtime/kernels/cpu_mixed.h"

namespace tessera::models {

namespace k = tessera::kernels::cpu;

ParamRegistry build_gpt_registry(const GPTConfig& config) {
  config.validate();
  const int64_t C = config.n_embd, V = config.vocab_size, L = config.n_layer;
  const float std_base = 0.02f;
  const float std_resid = static_cast<float>(0.02 / std::sqrt(2.0 * L));
  ParamRegistry reg;
  auto normal = [](float s) { return std::pair{ParamInit::Normal, s}; };
  auto add = [&](std::string name, Shape shape, int layer, std::pair<ParamInit, float> init) {
    reg.add(ParamSpec{std::move(name), std::move(shape), layer, init.first, init.second});
  };
  const std::pair ones{ParamInit::Ones, 0.0f}, zeros{ParamInit::Zeros, 0.0f};
  add("wte.weight", {V, C}, 0, normal(std_base));
  add("wpe.weight", {config.block_size, C}, 0, normal(std_base));
  for (int l = 0; l < L; ++l) {
    const std::string h = fmt::format("h.{}.", l);
    const int layer = l + 1;
    add(h + "ln_1.weight", {C}, layer, ones);
    add(h + "ln_1.bias", {C}, layer, zeros);
    add(h + "attn.c_attn.weight", {3 * C, C}, layer, normal(std_base));
    add(h + "attn.c_attn.bias", {3 * C}, layer, zeros);
    add(h + "attn.c_proj.weight", {C, C}, layer, normal(std_resid));
    add(h + "attn.c_proj.bias", {C}, layer, zeros);
    add(h + "ln_2.weight", {C}, layer, ones);
    add(h + "ln_2.bias", {C}, layer, zeros);
    add(h + "mlp.c_fc.weight", {4 * C, C}, layer, normal(std_base));
    add(h + "mlp.c_fc.bias", {4 * C}, layer, zeros);
    add(h + "mlp.c_proj.weight", {C, 4 * C}, layer, normal(std_resid));
    add(h + "mlp.c_proj.bias", {C}, layer, zeros);
  }
  add("ln_f.weight", {C}, static_cast<int>(L) + 1, ones);
  add("ln_f.bias", {C}, static_cast<int>(L) + 1, zeros);
  return reg;
}

template <typename T>
GPT<T>::GPT(const GPTConfig& config, DType dtype)
    : config_(config), dtype_(dtype), registry_(build_gpt_registry(config)) {
  const bool ok = std::is_same_v<T, float> ? (dtype == DType::F32 || mixed()) : dtype == dtype_of<T>();
  TS_CHECK(ok, "GPT<{}> cannot run in {}: use f32, bf16 or f16 with float, f64 with double",
           dtype_name(dtype_of<T>()), dtype_name(dtype));
}

template <typename T>
template <typename E>
typename GPT<T>::template BlockOf<E> GPT<T>::block_params(E* base) const {
  const int64_t C = config_.n_embd;
  BlockOf<E> p;
  E* cur = base;
  auto take = [&](int64_t n) {
    E* out = cur;
    cur += n;
    return out;
  };
  p.ln1w = take(C);
  p.ln1b = take(C);
  p.qkvw = take(3 * C * C);
  p.qkvb = take(3 * C);
  p.attprojw = take(C * C);
  p.attprojb = take(C);
  p.ln2w = take(C);
  p.ln2b = take(C);
  p.fcw = take(4 * C * C);
  p.fcb = take(4 * C);
  p.fcprojw = take(4 * C * C);
  p.fcprojb = take(C);
  return p;
}

template <typename T>
void GPT<T>::allocate_activations(int B, int T_) {
  const int64_t elems = layout_activations(B, T_);
  arena_ = Storage(static_cast<size_t>(elems) * sizeof(T), MemCategory::Activations);
  arena_B_ = B;
  arena_T_ = T_;
}

template <typename T>
int64_t GPT<T>::activation_bytes_for(const GPTConfig& config, int B, int T_, DType dtype) {
  GPT<T> planner(config, dtype);
  return planner.layout_activations(B, T_) * static_cast<int64_t>(sizeof(T));
}

template <typename T>
int64_t GPT<T>::layout_activations(int B, int T_) {
  TS_CHECK(B >= 1 && T_ >= 1, "batch shape {}x{} must be positive", B, T_);
  TS_CHECK(T_ <= config_.block_size,
           "sequence length {} exceeds the model's block_size {}: lower data.seq_len or raise "
           "model.block_size",
           T_, config_.block_size);
  const int64_t BT = int64_t{B} * T_, C = config_.n_embd, V = config_.vocab_size;
  const int64_t NH = config_.n_head, L = config_.n_layer;
  int64_t off = 0;
  auto place = [&](int64_t n) {
    const int64_t at = off;
    off += (n + 15) / 16 * 16;  // keep every buffer 64-byte aligned for float
    return at;
  };
  auto place16 = [&](int64_t n) { return place((n + 1) / 2); };  // n 16-bit values, for float
  arena_B_ = B;  // place_block_acts lays blocks out for this capacity
  arena_T_ = T_;
  encoded_ = place(BT * C);
  place_block_acts(nullptr, &block_stride_);
  blocks_ = place(L * block_stride_);
  lnf_ = place(BT * C);
  lnf_mean_ = place(BT);
  lnf_rstd_ = place(BT);
  losses_ = place(BT);
  head_scratch_ = place(std::min<int64_t>(BT, k::kHeadChunkRows) * V);
  dresidual_ = place(BT * C);
  dln_ = place(BT * C);
  dqkv_ = place(3 * BT * C);
  datty_ = place(BT * C);
  dfch_ = place(4 * BT * C);
  dfch_gelu_ = place(4 * BT * C);
  if (mixed()) {
    int64_t block_numel = 0;  // the largest layer but the embeddings: a block
    for (int l = 1; l < registry_.num_layers(); ++l) {
      block_numel = std::max(block_numel, registry_.layer(l).numel());
    }
    lnf16_ = place16(BT * C);
    scratch16_ = place16(4 * BT * C);
    head_scratch16_ = place16(std::min<int64_t>(BT, k::kHeadChunkRows) * V);
    grad_ws_ = place(block_numel);
    grad_ws0_ = place(registry_.layer(0).numel());
    small_f32_ = place(13 * C);
  }
  arena_elems_ = off;
  return off;
}

template <typename T>
typename GPT<T>::BlockActs GPT<T>::place_block_acts(T* cursor, int64_t* stride) const {
  const int64_t C = config_.n_embd, NH = config_.n_head;
  const int64_t cap = int64_t{arena_B_} * arena_T_;
  int64_t off = 0;
  // Each buffer is laid out for the arena's capacity; a smaller batch uses its prefix.
  auto take = [&](int64_t capacity) {
    T* out = cursor == nullptr ? nullptr : cursor + off;
    off += (capacity + 15) / 16 * 16;
    return out;
  };
  auto take16 = [&](int64_t capacity) {
    return reinterpret_cast<uint16_t*>(take((capacity + 1) / 2));
  };
  const bool m = mixed();
  BlockActs a{};
  if (m) a.ln1_16 = take16(cap * C); else a.ln1 = take(cap * C);
  a.ln1_mean = take(cap);
  a.ln1_rstd = take(cap);
  if (m) a.qkv16 = take16(3 * cap * C); else a.qkv = take(3 * cap * C);
  if (m) a.atty16 = take16(cap * C); else a.atty = take(cap * C);
  a.lse = take(int64_t{arena_B_} * NH * arena_T_);
  a.residual2 = take(cap * C);
  if (m) a.ln2_16 = take16(cap * C); else a.ln2 = take(cap * C);
  a.ln2_mean = take(cap);
  a.ln2_rstd = take(cap);
  if (m) a.fch16 = take16(4 * cap * C); else a.fch = take(4 * cap * C);
  if (m) a.fch_gelu16 = take16(4 * cap * C); else a.fch_gelu = take(4 * cap * C);
  a.residual3 = take(cap * C);
  if (stride != nullptr) *stride = off;
  return a;
}

template <typename T>
typename GPT<T>::BlockActs GPT<T>::block_acts(int layer) const {
  return place_block_acts(static_cast<T*>(arena_.data()) + blocks_ + int64_t{layer} * block_stride_,
                          nullptr);
}

template <typename T>
void GPT<T>::check_shape(int B, int T_) const {
  TS_CHECK(arena_.data() != nullptr, "GPT: allocate_activations() must run before forward");
  TS_CHECK(B >= 1 && T_ >= 1 && int64_t{B} * T_ <= int64_t{arena_B_} * arena_T_ && T_ <= arena_T_ &&
               B <= arena_B_,
           "batch {}x{} exceeds the activation arena sized for {}x{}", B, T_, arena_B_, arena_T_);
}

template <typename T>
void GPT<T>::block_forward(const BlockParams& p, const BlockActs& a, const T* input, int B, int T_) {
  const int64_t BT = int64_t{B} * T_, C = config_.n_embd;
  k::layernorm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, input, p.ln1w, p.ln1b, BT, C);
  k::matmul_forward(a.qkv, a.ln1, p.qkvw, p.qkvb, BT, C, 3 * C);
  k::attention_forward(a.atty, a.lse, a.qkv, B, T_, static_cast<int>(C), config_.n_head);
  // The projection is written straight into the residual stream and the input added in
  // place: backward never needs the projection's output on its own.
  k::matmul_forward(a.residual2, a.atty, p.attprojw, p.attprojb, BT, C, C);
  k::residual_forward(a.residual2, a.residual2, input, BT * C);
  k::layernorm_forward(a.ln2, a.ln2_mean, a.ln2_rstd, a.residual2, p.ln2w, p.ln2b, BT, C);
  k::matmul_forward(a.fch, a.ln2, p.fcw, p.fcb, BT, C, 4 * C);
  k::gelu_forward(a.fch_gelu, a.fch, 4 * BT * C);
  k::matmul_forward(a.residual3, a.fch_gelu, p.fcprojw, p.fcprojb, BT, 4 * C, C);
  k::residual_forward(a.residual3, a.residual3, a.residual2, BT * C);
}

template <typename T>
void GPT<T>::forward_body(ParamAccess& params, const int32_t* inputs, int B, int T_) {
  last_T_ = T_;
  const int64_t BT = int64_t{B} * T_, C = config_.n_embd, V = config_.vocab_size;
  T* arena = static_cast<T*>(arena_.data());
  T* encoded = arena + encoded_;
  {
    T* emb = static_cast<T*>(params.acquire(0));
    k::embedding_forward(encoded, inputs, emb, emb + V * C, B, T_, static_cast<int>(C));
    params.release(0);
  }
  const T* x = encoded;
  for (int l = 0; l < config_.n_layer; ++l) {
    const BlockParams p = block_params(static_cast<T*>(params.acquire(l + 1)));
    const BlockActs a = block_acts(l);
    block_forward(p, a, x, B, T_);
    params.release(l + 1);
    x = a.residual3;
  }
  const T* lnf = static_cast<T*>(params.acquire(config_.n_layer + 1));
  k::layernorm_forward(arena + lnf_, arena + lnf_mean_, arena + lnf_rstd_, x, lnf, lnf + C, BT, C);
  params.release(config_.n_layer + 1);
}

template <typename T>
double GPT<T>::forward(ParamAccess& params, const int32_t* inputs, const int32_t* targets, int B,
                       int T_) {
  check_shape(B, T_);
  if constexpr (std::is_same_v<T, float>) {
    if (mixed()) {
      forward_body16(params, inputs, B, T_);
      if (targets == nullptr) return 0.0;
      return head16(params, targets, B, T_, /*backward=*/false, 0.0) /
             (static_cast<double>(B) * T_);
    }
  }
  forward_body(params, inputs, B, T_);
  if (targets == nullptr) return 0.0;
  const int64_t BT = int64_t{B} * T_, C = config_.n_embd, V = config_.vocab_size;
  T* arena = static_cast<T*>(arena_.data());
  const T* wte = static_cast<T*>(params.acquire(0));
  const double loss_sum =
      k::lm_head_cross_entropy<T>(nullptr, nullptr, arena + losses_, arena + lnf_, wte, targets,
                                  BT, C, V, T(0), arena + head_scratch_);
  params.release(0);
  return loss_sum / static_cast<double>(BT);
}

template <typename T>
void GPT<T>::logits_at(ParamAccess& params, int b, int t, T* out) {
  const int64_t C = config_.n_embd, V = config_.vocab_size;
  const int64_t row_at = (int64_t{b} * last_T_ + t) * C;
  if constexpr (std::is_same_v<T, float>) {
    if (mixed()) {
      const auto* wte16 = static_cast<const uint16_t*>(params.acquire(0));
      k::matmul_forward16(dtype_, out, arena_16(lnf16_) + row_at, wte16, nullptr, 1, C, V);
      params.release(0);
      return;
    }
  }
  const T* row = static_cast<T*>(arena_.data()) + lnf_ + row_at;
  const T* wte = static_cast<T*>(params.acquire(0));
  k::matmul_forward<T>(out, row, wte, nullptr, 1, C, V);
  params.release(0);
}

template <typename T>
void GPT<T>::block_backward(const BlockParams& p, BlockParams& g, const BlockActs& a,
                            const T* input, int B, int T_) {
  const int64_t BT = int64_t{B} * T_, C = config_.n_embd;
  T* arena = static_cast<T*>(arena_.data());
  T* dres = arena + dresidual_;  // holds dL/d(block output) on entry, dL/d(input) on exit
  T* dln = arena + dln_;
  T* dqkv = arena + dqkv_;
  T* datty = arena + datty_;
  T* dfch = arena + dfch_;
  T* dfch_gelu = arena + dfch_gelu_;
  // MLP branch: residual3 = residual2 + mlp(ln2(residual2)); the residual stream's gradient
  // passes through unchanged and the branch adds its part.
  std::memset(dfch_gelu, 0, sizeof(T) * 4 * BT * C);
  k::matmul_backward(dfch_gelu, g.fcprojw, g.fcprojb, dres, a.fch_gelu, p.fcprojw, BT, 4 * C, C);
  std::memset(dfch, 0, sizeof(T) * 4 * BT * C);
  k::gelu_backward(dfch, a.fch, dfch_gelu, 4 * BT * C);
  std::memset(dln, 0, sizeof(T) * BT * C);
  k::matmul_backward(dln, g.fcw, g.fcb, dfch, a.ln2, p.fcw, BT, C, 4 * C);
  k::layernorm_backward(dres, g.ln2w, g.ln2b, dln, a.residual2, p.ln2w, a.ln2_mean, a.ln2_rstd,
                        BT, C);
  // Attention branch: residual2 = input + proj(attn(ln1(input))).
  std::memset(datty, 0, sizeof(T) * BT * C);
  k::matmul_backward(datty, g.attprojw, g.attprojb, dres, a.atty, p.attprojw, BT, C, C);
  std::memset(dqkv, 0, sizeof(T) * 3 * BT * C);
  k::attention_backward(dqkv, datty, a.qkv, a.atty, a.lse, B, T_, static_cast<int>(C),
                        config_.n_head);
  std::memset(dln, 0, sizeof(T) * BT * C);
  k::matmul_backward(dln, g.qkvw, g.qkvb, dqkv, a.ln1, p.qkvw, BT, C, 3 * C);
  k::layernorm_backward(dres, g.ln1w, g.ln1b, dln, input, p.ln1w, a.ln1_mean, a.ln1_rstd, BT, C);
}

template <typename T>
double GPT<T>::forward_backward(ParamAccess& params, const int32_t* inputs, const int32_t* targets,
                                int B, int T_, double grad_scale) {
  check_shape(B, T_);
  TS_CHECK(targets != nullptr, "forward_backward needs targets");
  if constexpr (std::is_same_v<T, float>) {
    if (mixed()) {
      forward_body16(params, inputs, B, T_);
      const double loss_sum = head16(params, targets, B, T_, /*backward=*/true, grad_scale);
      backward16(params, inputs, B, T_);
      return loss_sum / (static_cast<double>(B) * T_);
    }
  }
  forward_body(params, inputs, B, T_);
  const int64_t BT = int64_t{B} * T_, C = config_.n_embd, V = config_.vocab_size;
  const int L = config_.n_layer;
  T* arena = static_cast<T*>(arena_.data());
  T* dres = arena + dresidual_;
  T* dln = arena + dln_;

  // Head and loss, fused: dlnf lands in dln, the head's wte gradient goes to layer 0's grads.
  std::memset(dln, 0, sizeof(T) * BT * C);
  T* wte = static_cast<T*>(params.acquire(0));
  T* dwte = static_cast<T*>(params.grads(0));
  const double loss_sum = k::lm_head_cross_entropy<T>(
      dln, dwte, arena + losses_, arena + lnf_, wte, targets, BT, C, V,
      static_cast<T>(grad_scale / static_cast<double>(BT)), arena + head_scratch_);
  params.release(0);

  const T* last = L > 0 ? block_acts(L - 1).residual3 : arena + encoded_;
  {
    const T* lnf = static_cast<T*>(params.acquire(L + 1));
    T* dlnf = static_cast<T*>(params.grads(L + 1));
    std::memset(dres, 0, sizeof(T) * BT * C);
    k::layernorm_backward(dres, dlnf, dlnf + C, dln, last, lnf, arena + lnf_mean_,
                          arena + lnf_rstd_, BT, C);
    params.release(L + 1);
    params.grads_ready(L + 1);
  }
  for (int l = L - 1; l >= 0; --l) {
    const BlockParams p = block_params(static_cast<T*>(params.acquire(l + 1)));
    BlockParams g = block_params(static_cast<T*>(params.grads(l + 1)));
    const T* input = l > 0 ? block_acts(l - 1).residual3 : arena + encoded_;
    block_backward(p, g, block_acts(l), input, B, T_);
    params.release(l + 1);
    params.grads_ready(l + 1);
  }
  {
    params.acquire(0);
    T* demb = static_cast<T*>(params.grads(0));
    k::embedding_backward(demb, demb + V * C, dres, inputs, B, T_, static_cast<int>(C));
    params.release(0);
    params.grads_ready(0);
  }
  return loss_sum / static_cast<double>(BT);
}

template <typename T>
typename GPT<T>::KvCache GPT<T>::make_kv_cache() const {
  const size_t C = config_.n_embd;
  KvCache cache;
  const size_t per_layer = static_cast<size_t>(config_.block_size) * C;
  cache.k.assign(per_layer * config_.n_layer, T(0));
  cache.v.assign(per_layer * config_.n_layer, T(0));
  cache.x.resize(C);
  cache.buf.resize(C);
  cache.qkv.resize(3 * C);
  cache.att.resize(std::max<size_t>(config_.block_size, C));
  cache.fc.resize(8 * C);
  return cache;
}

template <typename T>
void GPT<T>::decode_step(ParamAccess& params, KvCache& cache, int32_t token, T* logits) {
  const int64_t C = config_.n_embd, V = config_.vocab_size, NH = config_.n_head, hs = C / NH;
  const int pos = cache.length;
  TS_CHECK(!mixed(), "decode_step runs in {} only: sample from an fp32 copy of the weights",
           dtype_name(dtype_of<T>()));
  TS_CHECK(pos < config_.block_size, "the KV cache is full ({} positions = block_size)", pos);
  TS_CHECK(token >= 0 && token < V, "token {} is outside the vocabulary of {}", token, V);
  T* x = cache.x.data();
  {
    const T* emb = static_cast<T*>(params.acquire(0));
    for (int64_t c = 0; c < C; ++c) x[c] = emb[token * C + c] + emb[V * C + pos * C + c];
    params.release(0);
  }
  T mean, rstd;
  const T scale = T(1) / std::sqrt(T(hs));
  for (int l = 0; l < config_.n_layer; ++l) {
    const BlockParams p = block_params(static_cast<T*>(params.acquire(l + 1)));
    T* kc = cache.k.data() + static_cast<size_t>(l) * config_.block_size * C;
    T* vc = cache.v.data() + static_cast<size_t>(l) * config_.block_size * C;
    T* h = cache.buf.data();
    k::layernorm_forward(h, &mean, &rstd, x, p.ln1w, p.ln1b, 1, C);
    k::matmul_forward(cache.qkv.data(), h, p.qkvw, p.qkvb, 1, C, 3 * C);
    std::copy(cache.qkv.begin() + C, cache.qkv.begin() + 2 * C, kc + pos * C);
    std::copy(cache.qkv.begin() + 2 * C, cache.qkv.begin() + 3 * C, vc + pos * C);
    // One query against the cached keys, head by head: the same softmax as the full
    // forward, without the block tiling.
    T* y = h;  // ln1 output is no longer needed
    for (int64_t hd = 0; hd < NH; ++hd) {
      const T* q = cache.qkv.data() + hd * hs;
      T* w = cache.att.data();
      T mx = -std::numeric_limits<T>::infinity();
      for (int j = 0; j <= pos; ++j) {
        T dot = 0;
        for (int64_t d = 0; d < hs; ++d) dot += q[d] * kc[j * C + hd * hs + d];
        w[j] = dot * scale;
        mx = std::max(mx, w[j]);
      }
      T sum = 0;
      for (int j = 0; j <= pos; ++j) sum += (w[j] = std::exp(w[j] - mx));
      for (int64_t d = 0; d < hs; ++d) y[hd * hs + d] = 0;
      for (int j = 0; j <= pos; ++j) {
        const T pj = w[j] / sum;
        for (int64_t d = 0; d < hs; ++d) y[hd * hs + d] += pj * vc[j * C + hd * hs + d];
      }
    }
    T* proj = cache.fc.data();
    k::matmul_forward(proj, y, p.attprojw, p.attprojb, 1, C, C);
    for (int64_t c = 0; c < C; ++c) x[c] += proj[c];
    k::layernorm_forward(h, &mean, &rstd, x, p.ln2w, p.ln2b, 1, C);
    T* fc = cache.fc.data();
    T* fc_gelu = cache.fc.data() + 4 * C;
    k::matmul_forward(fc, h, p.fcw, p.fcb, 1, C, 4 * C);
    k::gelu_forward(fc_gelu, fc, 4 * C);
    k::matmul_forward(h, fc_gelu, p.fcprojw, p.fcprojb, 1, 4 * C, C);
    for (int64_t c = 0; c < C; ++c) x[c] += h[c];
    params.release(l + 1);
  }
  const T* lnf = static_cast<T*>(params.acquire(config_.n_layer + 1));
  k::layernorm_forward(cache.buf.data(), &mean, &rstd, x, lnf, lnf + C, 1, C);
  params.release(config_.n_layer + 1);
  const T* wte = static_cast<T*>(params.acquire(0));
  k::matmul_forward<T>(logits, cache.buf.data(), wte, nullptr, 1, C, V);
  params.release(0);
  cache.length = pos + 1;
}

template class GPT<float>;
template class GPT<double>;
// gpt_mixed.cc reads 16-bit weights and fp32 gradient workspaces through the same layout.
template GPT<float>::BlockOf<const uint16_t> GPT<float>::block_params(const uint16_t*) const;
template GPT<float>::BlockOf<float> GPT<float>::block_params(float*) const;

}  // namespace tessera::models
