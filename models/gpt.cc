#include "models/gpt.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include <fmt/format.h>

#include "runtime/core/error.h"

namespace tessera::models {

ParamRegistry build_gpt_registry(const GPTConfig& config, int wte_chunks, bool head_copy,
                                 TpLayout tp, const PipelinePart& part) {
  config.validate();
  check_tensor_parallel(config, tp.size);
  TS_CHECK(!part.active() || head_copy,
           "a pipeline rank's registry needs the head copy (its last stage holds no wte)");
  const GptLayers layers(config, wte_chunks, head_copy, tp);
  const int64_t C = config.n_embd, L = config.n_layer, t = tp.size, r = tp.rank;
  const int64_t Ca = layers.local_width(), F = layers.local_hidden(), Vr = layers.vocab_rows;
  const float std_base = 0.02f;
  const float std_resid = static_cast<float>(0.02 / std::sqrt(2.0 * L));
  ParamRegistry reg;
  auto normal = [](float s) { return std::pair{ParamInit::Normal, s}; };
  // A part of a whole parameter `whole`: row runs and a column offset (TpSlice).
  struct Part {
    TpSplit split = TpSplit::None;
    Shape whole;
    std::vector<TpSlice::RowRun> runs;
    int64_t col_begin = 0;
  };
  int next_id = 0;  // the parameter's index in the whole model's registry
  auto add = [&](std::string name, Shape shape, int layer, std::pair<ParamInit, float> init,
                 int64_t rows_per_layer = 0, Part tp_part = {}, int init_id = -1) {
    const int id = next_id++;
    if (!layers.holds(part, layer)) return;
    ParamSpec spec{std::move(name), std::move(shape), layer, init.first, init.second,
                   TpSplit::None, {}, 0, init_id >= 0 ? init_id : id, rows_per_layer};
    if (t > 1 && tp_part.split != TpSplit::None) {
      spec.split = tp_part.split;
      spec.tp = TpSlice{std::move(tp_part.whole), std::move(tp_part.runs), tp_part.col_begin};
    }
    reg.add(std::move(spec));
  };
  // Column-parallel: this rank's block of `rows` of `whole_rows`; c_attn's q, k and v each.
  auto rows_part = [&](Shape whole, int64_t rows, int pieces = 1) {
    Part p{TpSplit::Rows, std::move(whole), {}, 0};
    const int64_t piece = p.whole[0] / pieces;
    for (int k = 0; k < pieces; ++k) p.runs.push_back({k * piece + r * rows, rows});
    return p;
  };
  auto cols_part = [&](Shape whole, int64_t cols) {
    Part p{TpSplit::Cols, std::move(whole), {{0, 0}}, r * cols};
    p.runs[0].rows = p.whole[0];
    return p;
  };
  const std::pair ones{ParamInit::Ones, 0.0f}, zeros{ParamInit::Zeros, 0.0f};
  add("wte.weight", {Vr, C}, layers.wte_layer(0), normal(std_base),
      layers.chunked() ? layers.rows_per_chunk() : 0,
      rows_part({int64_t{config.vocab_size}, C}, Vr));
  add("wpe.weight", {config.block_size, C}, layers.wpe_layer(), normal(std_base));
  for (int l = 0; l < L; ++l) {
    const std::string h = fmt::format("h.{}.", l);
    const int attn_in = layers.block_layer(l, kAttentionIn);
    const int attn_out = layers.block_layer(l, kAttentionOut);
    const int mlp_in = layers.block_layer(l, kMlpIn);
    const int mlp_out = layers.block_layer(l, kMlpOut);
    add(h + "ln_1.weight", {C}, attn_in, ones);
    add(h + "ln_1.bias", {C}, attn_in, zeros);
    add(h + "attn.c_attn.weight", {3 * Ca, C}, attn_in, normal(std_base), 0,
        rows_part({3 * C, C}, Ca, 3));
    add(h + "attn.c_attn.bias", {3 * Ca}, attn_in, zeros, 0, rows_part({3 * C}, Ca, 3));
    add(h + "attn.c_proj.weight", {C, Ca}, attn_out, normal(std_resid), 0, cols_part({C, C}, Ca));
    add(h + "attn.c_proj.bias", {C}, attn_out, zeros);
    add(h + "ln_2.weight", {C}, mlp_in, ones);
    add(h + "ln_2.bias", {C}, mlp_in, zeros);
    add(h + "mlp.c_fc.weight", {F, C}, mlp_in, normal(std_base), 0, rows_part({4 * C, C}, F));
    add(h + "mlp.c_fc.bias", {F}, mlp_in, zeros, 0, rows_part({4 * C}, F));
    add(h + "mlp.c_proj.weight", {C, F}, mlp_out, normal(std_resid), 0,
        cols_part({C, 4 * C}, F));
    add(h + "mlp.c_proj.bias", {C}, mlp_out, zeros);
  }
  add("ln_f.weight", {C}, layers.lnf_layer(), ones);
  add("ln_f.bias", {C}, layers.lnf_layer(), zeros);
  if (head_copy) {
    // wte's twin: the same draws (wte is parameter 0).
    add("lm_head.weight", {Vr, C}, layers.head_layer(0), normal(std_base),
        layers.chunked() ? layers.rows_per_chunk() : 0,
        rows_part({int64_t{config.vocab_size}, C}, Vr), /*init_id=*/0);
  }
  reg.pad_layers(layers.num_layers());
  TS_CHECK(reg.num_layers() == layers.num_layers(), "GPT registry holds {} layers, expected {}",
           reg.num_layers(), layers.num_layers());
  // The head reports each chunk's gradient as soon as it is formed, the embedding its rows at
  // the end of backward: a chunk is reduced twice instead of waiting whole all of backward.
  // With a head copy each is reported once, by its own side.
  if (layers.chunked() && !head_copy) {
    for (int k = 0; k < layers.wte_chunks; ++k) reg.set_grad_reports(layers.wte_layer(k), 2);
  }
  return reg;
}

void check_tensor_parallel(const GPTConfig& config, int tp_size) {
  TS_CHECK(tp_size >= 1, "tensor_model_parallel_size must be >= 1, got {}", tp_size);
  TS_CHECK(config.n_head % tp_size == 0,
           "tensor_model_parallel_size {} does not divide n_head {}: each rank holds whole "
           "attention heads, so choose a divisor of {}",
           tp_size, config.n_head, config.n_head);
}

template <typename T>
GPT<T>::GPT(const GPTConfig& config, DType dtype, Device device, int wte_chunks, TpLayout tp,
            PipelinePart part)
    : config_(config),
      dtype_(dtype),
      part_(std::move(part)),
      layers_(config, wte_chunks, part_.active(), tp),
      registry_(build_gpt_registry(config, wte_chunks, part_.active(), tp, part_)),
      ops_(kernels::make_ops<T>(device, dtype)) {
  if (!part_.active()) {
    stages_.push_back(
        std::make_unique<Stage<T>>(config_, layers_, registry_, *ops_, 0, layers_.num_layers()));
  }
  for (const auto& [b0, b1] : part_.chunks) {
    TS_CHECK(0 <= b0 && b0 < b1 && b1 <= config_.n_layer,
             "pipeline chunk: blocks [{}, {}) are not a range of the model's {} blocks", b0, b1,
             config_.n_layer);
    stages_.push_back(std::make_unique<Stage<T>>(config_, layers_, registry_, *ops_,
                                                 layers_.stage_first_layer(b0),
                                                 layers_.stage_last_layer(b1)));
  }
}

template <typename T>
void GPT<T>::whole_model(const char* what) const {
  TS_CHECK(!part_.active(),
           "GPT::{} runs the whole model; this one holds pipeline chunks (the engine drives "
           "its stages)",
           what);
}

template <typename T>
int64_t GPT<T>::activation_bytes_for(const GPTConfig& config, int B, int T_, DType dtype,
                                     const RecomputePolicy& recompute, int wte_chunks,
                                     TpLayout tp) {
  GPT<T> planner(config, dtype, Device::cpu(), wte_chunks, tp);
  planner.stage().set_recompute(recompute);
  return planner.stage().activation_bytes_for(1, B, T_);
}

template <typename T>
double GPT<T>::forward(ParamAccess& params, const int32_t* inputs, const int32_t* targets, int B,
                       int T_) {
  whole_model("forward");
  stage().forward(params, 0, inputs, B, T_);
  last_T_ = T_;
  if (targets == nullptr) return 0.0;
  const double loss_sum = stage().head(params, 0, targets, B, T_, /*backward=*/false, 0.0);
  return loss_sum / static_cast<double>(int64_t{B} * T_);
}

template <typename T>
double GPT<T>::forward_backward(ParamAccess& params, const int32_t* inputs, const int32_t* targets,
                                int B, int T_, double grad_scale) {
  TS_CHECK(targets != nullptr, "forward_backward needs targets");
  whole_model("forward_backward");
  stage().forward(params, 0, inputs, B, T_);
  last_T_ = T_;
  const double loss_sum = stage().head(params, 0, targets, B, T_, /*backward=*/true, grad_scale);
  stage().backward(params, 0, inputs, B, T_);
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
  // The embeddings' layers (whole, or wte in row chunks; gpt_layers.h).
  {
    int layer = 0;
    int64_t row = token;
    if (layers_.chunked()) {
      layer = static_cast<int>(token / layers_.rows_per_chunk());
      row = token - layers_.chunk_begin(layer);
    }
    const T* wte_rows = static_cast<T*>(params.acquire(layers_.wte_layer(layer)));
    for (int64_t c = 0; c < C; ++c) x[c] = wte_rows[row * C + c];
    params.release(layers_.wte_layer(layer));
    const T* wpe = static_cast<T*>(params.acquire(layers_.wpe_layer()));
    if (!layers_.chunked()) wpe += V * C;
    for (int64_t c = 0; c < C; ++c) x[c] += wpe[pos * C + c];
    params.release(layers_.wpe_layer());
  }
  T mean, rstd;
  const T scale = T(1) / std::sqrt(T(hs));
  for (int l = 0; l < config_.n_layer; ++l) {
    // A block's layers (gpt_layers.h), tensors in registry order.
    const T* attn_in = static_cast<const T*>(params.acquire(layers_.block_layer(l, kAttentionIn)));
    const T* attn_out =
        static_cast<const T*>(params.acquire(layers_.block_layer(l, kAttentionOut)));
    const T* mlp_in = static_cast<const T*>(params.acquire(layers_.block_layer(l, kMlpIn)));
    const T* mlp_out = static_cast<const T*>(params.acquire(layers_.block_layer(l, kMlpOut)));
    const T* ln1w = attn_in;
    const T* ln1b = ln1w + C;
    const T* qkvw = ln1b + C;
    const T* qkvb = qkvw + 3 * C * C;
    const T* attprojw = attn_out;
    const T* attprojb = attprojw + C * C;
    const T* ln2w = mlp_in;
    const T* ln2b = ln2w + C;
    const T* fcw = ln2b + C;
    const T* fcb = fcw + 4 * C * C;
    const T* fcprojw = mlp_out;
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
    for (int part = kBlockParts - 1; part >= 0; --part) {
      params.release(layers_.block_layer(l, static_cast<BlockPart>(part)));
    }
  }
  const T* lnf = static_cast<T*>(params.acquire(layers_.lnf_layer()));
  o.layernorm_forward(cache.buf, &mean, &rstd, x, lnf, lnf + C, 1, C);
  params.release(layers_.lnf_layer());
  for (int k = 0; k < layers_.wte_chunks; ++k) {
    const T* head_rows = static_cast<T*>(params.acquire(layers_.head_layer(k)));
    o.linear_forward(logits + layers_.chunk_begin(k), cache.buf, head_rows, nullptr, 1, C,
                     layers_.chunk_rows(k));
    params.release(layers_.head_layer(k));
  }
  cache.length = pos + 1;
}

template class GPT<float>;
template class GPT<double>;

}  // namespace tessera::models
