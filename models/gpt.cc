#include "models/gpt.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include <fmt/format.h>

#include "runtime/core/error.h"

namespace tessera::models {

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
GPT<T>::GPT(const GPTConfig& config, DType dtype, Device device)
    : config_(config), dtype_(dtype), registry_(build_gpt_registry(config)),
      ops_(kernels::make_ops<T>(device, dtype)),
      stage_(config_, registry_, *ops_, 0, config_.n_layer + 2) {}

template <typename T>
int64_t GPT<T>::activation_bytes_for(const GPTConfig& config, int B, int T_, DType dtype,
                                     const RecomputePolicy& recompute) {
  GPT<T> planner(config, dtype);
  planner.stage_.set_recompute(recompute);
  return planner.stage_.activation_bytes_for(1, B, T_);
}

template <typename T>
double GPT<T>::forward(ParamAccess& params, const int32_t* inputs, const int32_t* targets, int B,
                       int T_) {
  stage_.forward(params, 0, inputs, B, T_);
  last_T_ = T_;
  if (targets == nullptr) return 0.0;
  const double loss_sum = stage_.head(params, 0, targets, B, T_, /*backward=*/false, 0.0);
  return loss_sum / static_cast<double>(int64_t{B} * T_);
}

template <typename T>
double GPT<T>::forward_backward(ParamAccess& params, const int32_t* inputs, const int32_t* targets,
                                int B, int T_, double grad_scale) {
  TS_CHECK(targets != nullptr, "forward_backward needs targets");
  stage_.forward(params, 0, inputs, B, T_);
  last_T_ = T_;
  const double loss_sum = stage_.head(params, 0, targets, B, T_, /*backward=*/true, grad_scale);
  stage_.backward(params, 0, inputs, B, T_);
  return loss_sum / static_cast<double>(int64_t{B} * T_);
}

template <typename T>
typename GPT<T>::KvCache GPT<T>::make_kv_cache() const {
  const size_t C = config_.n_embd;
  KvCache cache;
  const size_t per_layer = static_cast<size_t>(config_.block_size) * C;
  const size_t att = std::max<size_t>(config_.block_size, C);
  const size_t total = 2 * per_layer * config_.n_layer + C + C + 3 * C + att + 8 * C;
  cache.memory = Storage(total * sizeof(T), MemCategory::Activations);
  T* cur = static_cast<T*>(cache.memory.data());
  auto take = [&](size_t n) {
    T* at = cur;
    cur += n;
    return at;
  };
  cache.k = take(per_layer * config_.n_layer);
  cache.v = take(per_layer * config_.n_layer);
  cache.x = take(C);
  cache.buf = take(C);
  cache.qkv = take(3 * C);
  cache.att = take(att);
  cache.fc = take(8 * C);
  return cache;
}

template <typename T>
void GPT<T>::decode_step(ParamAccess& params, KvCache& cache, int32_t token, T* logits) {
  const int64_t C = config_.n_embd, V = config_.vocab_size, NH = config_.n_head, hs = C / NH;
  const int pos = cache.length;
  TS_CHECK(!mixed() && ops_->device().is_cpu(),
           "decode_step runs in {} on the CPU only: sample from an fp32 copy of the weights",
           dtype_name(dtype_of<T>()));
  kernels::Ops<T>& o = *ops_;
  TS_CHECK(pos < config_.block_size, "the KV cache is full ({} positions = block_size)", pos);
  TS_CHECK(token >= 0 && token < V, "token {} is outside the vocabulary of {}", token, V);
  T* x = cache.x;
  {
    const T* emb = static_cast<T*>(params.acquire(0));
    for (int64_t c = 0; c < C; ++c) x[c] = emb[token * C + c] + emb[V * C + pos * C + c];
    params.release(0);
  }
  T mean, rstd;
  const T scale = T(1) / std::sqrt(T(hs));
  for (int l = 0; l < config_.n_layer; ++l) {
    const T* p = static_cast<const T*>(params.acquire(l + 1));
    // A block's tensors in registry order: ln_1 (w, b), c_attn, attn c_proj, ln_2, c_fc, mlp c_proj.
    const T* ln1w = p;
    const T* ln1b = ln1w + C;
    const T* qkvw = ln1b + C;
    const T* qkvb = qkvw + 3 * C * C;
    const T* attprojw = qkvb + 3 * C;
    const T* attprojb = attprojw + C * C;
    const T* ln2w = attprojb + C;
    const T* ln2b = ln2w + C;
    const T* fcw = ln2b + C;
    const T* fcb = fcw + 4 * C * C;
    const T* fcprojw = fcb + 4 * C;
    const T* fcprojb = fcprojw + 4 * C * C;
    T* kc = cache.k + static_cast<size_t>(l) * config_.block_size * C;
    T* vc = cache.v + static_cast<size_t>(l) * config_.block_size * C;
    T* h = cache.buf;
    o.layernorm_forward(h, &mean, &rstd, x, ln1w, ln1b, 1, C);
    o.linear_forward(cache.qkv, h, qkvw, qkvb, 1, C, 3 * C);
    std::copy(cache.qkv + C, cache.qkv + 2 * C, kc + pos * C);
    std::copy(cache.qkv + 2 * C, cache.qkv + 3 * C, vc + pos * C);
    // One query against the cached keys, head by head: the same softmax as the full
    // forward, without the block tiling.
    T* y = h;  // ln1 output is no longer needed
    for (int64_t hd = 0; hd < NH; ++hd) {
      const T* q = cache.qkv + hd * hs;
      T* w = cache.att;
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
    T* proj = cache.fc;
    o.linear_forward(proj, y, attprojw, attprojb, 1, C, C);
    for (int64_t c = 0; c < C; ++c) x[c] += proj[c];
    o.layernorm_forward(h, &mean, &rstd, x, ln2w, ln2b, 1, C);
    T* fc = cache.fc;
    T* fc_gelu = cache.fc + 4 * C;
    o.linear_forward(fc, h, fcw, fcb, 1, C, 4 * C);
    o.gelu_forward(fc_gelu, fc, 4 * C);
    o.linear_forward(h, fc_gelu, fcprojw, fcprojb, 1, 4 * C, C);
    for (int64_t c = 0; c < C; ++c) x[c] += h[c];
    params.release(l + 1);
  }
  const T* lnf = static_cast<T*>(params.acquire(config_.n_layer + 1));
  o.layernorm_forward(cache.buf, &mean, &rstd, x, lnf, lnf + C, 1, C);
  params.release(config_.n_layer + 1);
  const T* wte = static_cast<T*>(params.acquire(0));
  o.linear_forward(logits, cache.buf, wte, nullptr, 1, C, V);
  params.release(0);
  cache.length = pos + 1;
}

template class GPT<float>;
template class GPT<double>;

}  // namespace tessera::models
