#include "models/stage.h"

#include <algorithm>
#include <type_traits>

#include "parallel/tp/conjugate.h"
#include "runtime/core/error.h"

namespace tessera::models {

template <typename T>
Stage<T>::Stage(const GPTConfig& config, const GptLayers& layers, const ParamRegistry& registry,
                kernels::Ops<T>& ops, int first, int last)
    : config_(config), layers_(layers), registry_(registry), ops_(ops), first_(first), last_(last) {
  const int count = layers.num_layers();
  TS_CHECK(registry.num_layers() == count, "the registry holds {} layers, the GPT layout {}",
           registry.num_layers(), count);
  TS_CHECK(0 <= first && first < last && last <= count,
           "stage layers [{}, {}) are not a range of the model's {} layers", first, last, count);
  auto at_boundary = [&](int layer) {
    if (layer == 0 || layer == count) return true;
    if (layer > layers.lnf_layer()) return false;  // within ln_f and the head copy
    const int from_blocks = layer - layers.embedding_layers();
    return from_blocks >= 0 && from_blocks % kBlockParts == 0;
  };
  TS_CHECK(at_boundary(first) && at_boundary(last),
           "stage layers [{}, {}) split a block or the embeddings: a stage starts and ends at a "
           "block",
           first, last);
  TS_CHECK(!has_head() || has_embedding() || layers.head_copy,
           "stage [{}, {}) holds the head but not the word embedding it is tied to (layer 0): "
           "build the model with a head copy (GptLayers::head_copy)",
           first, last);
  set_recompute(RecomputePolicy{});
}

template <typename T>
void Stage<T>::set_tensor_parallel(parallel::ProcessGroup* group) {
  TS_CHECK((std::is_same_v<T, float>), "tensor parallelism runs in f32, bf16 or f16 (GPT<float>)");
  TS_CHECK(group != nullptr && group->size() == layers_.tp.size &&
               group->rank() == layers_.tp.rank,
           "the tensor-parallel group must be rank {} of {} ranks, as the layers were built",
           layers_.tp.rank, layers_.tp.size);
  tp_group_ = group;
}

template <typename T>
int64_t Stage<T>::residual_rows(int B, int seq_len) const {
  const int64_t BT = int64_t{B} * seq_len;
  return sp() ? BT / layers_.tp.size : BT;
}

template <typename T>
void Stage<T>::tp_sum(T* x, int64_t n) {
  parallel::tp::reduce_from_region_forward(*tp_group_, x, static_cast<size_t>(n), DType::F32)
      ->wait();
}

template <typename T>
const void* Stage<T>::gather_ln(const void* stored, int B, int seq_len) {
  if (!sp()) return stored;
  const size_t local = static_cast<size_t>(residual_rows(B, seq_len) * config_.n_embd);
  void* full = buf(layout_.tp_gathered);
  parallel::tp::gather_sequence_forward(*tp_group_, stored, full, local, ops_.storage())->wait();
  return full;
}

template <typename T>
const T* Stage<T>::gather_residual_grad(const T* dres, int B, int seq_len) {
  if (!sp()) return dres;
  const size_t local = static_cast<size_t>(residual_rows(B, seq_len) * config_.n_embd);
  T* full = buf(layout_.tp_full);
  parallel::tp::reduce_scatter_sequence_backward(*tp_group_, dres, full, local, DType::F32)
      ->wait();
  return full;
}

template <typename T>
void Stage<T>::row_parallel_forward(T* out, const void* inp, const PartWeights& w, int B,
                                    int seq_len, int64_t in) {
  const int64_t BT = int64_t{B} * seq_len, C = config_.n_embd;
  if (!tp()) {
    ops_.linear_forward(out, inp, w.matrix, w.bias, BT, in, C);
    return;
  }
  // Each rank's partial sum over its columns; the bias once, after the reduction.
  const int64_t rows = residual_rows(B, seq_len);
  if (sp()) {
    T* partial = buf(layout_.tp_full);
    ops_.linear_forward(partial, inp, w.matrix, nullptr, BT, in, C);
    parallel::tp::reduce_scatter_sequence_forward(*tp_group_, partial, out,
                                                  static_cast<size_t>(rows * C), DType::F32)
        ->wait();
  } else {
    ops_.linear_forward(out, inp, w.matrix, nullptr, BT, in, C);
    tp_sum(out, BT * C);
  }
  ops_.bias_add(out, w.bias, rows, C);
}

template <typename T>
const T* Stage<T>::column_parallel_backward(const PartGrads& g, const PartWeights& w,
                                            const T* dout, const void* inp, int B, int seq_len,
                                            int64_t out) {
  const int64_t BT = int64_t{B} * seq_len, C = config_.n_embd;
  T* dln = buf(layout_.dln);
  void* dout16 = buf(layout_.dout16);
  ops_.zero(dln, BT * C);
  if (!tp()) {
    ops_.linear_backward(dln, g.matrix, g.bias, dout, dout16, inp, w.matrix, BT, C, out);
    return dln;
  }
  // The input gradient first, its sum over the group in flight while the weight gradient's
  // GEMM runs.
  ops_.linear_backward(dln, nullptr, nullptr, dout, dout16, inp, w.matrix, BT, C, out);
  T* result = dln;
  parallel::WorkPtr work;
  if (sp()) {
    result = buf(layout_.tp_full);
    work = parallel::tp::gather_sequence_backward(
        *tp_group_, dln, result, static_cast<size_t>(residual_rows(B, seq_len) * C), DType::F32);
  } else {
    work = parallel::tp::copy_to_region_backward(*tp_group_, dln, static_cast<size_t>(BT * C),
                                                 DType::F32);
  }
  ops_.linear_backward(nullptr, g.matrix, g.bias, dout, dout16, inp, w.matrix, BT, C, out);
  work->wait();
  return result;
}

template <typename T>
void Stage<T>::layernorm_backward_tp(T* dres, T* dweight, T* dbias, const T* dln, const T* inp,
                                     const T* weight, const T* mean, const T* rstd,
                                     int64_t rows) {
  const int64_t C = config_.n_embd;
  if (!sp()) {
    ops_.layernorm_backward(dres, dweight, dbias, dln, inp, weight, mean, rstd, rows, C);
    return;
  }
  // Each rank saw only its rows: this micro-batch's part is summed over the group before it
  // joins the accumulated gradients (weight and bias lie side by side).
  TS_CHECK(dbias == dweight + C, "a LayerNorm's weight and bias gradients must be adjacent");
  T* part = buf(layout_.tp_ln_grad);
  ops_.zero(part, 2 * C);
  ops_.layernorm_backward(dres, part, part + C, dln, inp, weight, mean, rstd, rows, C);
  tp_sum(part, 2 * C);
  ops_.residual_forward(dweight, dweight, part, 2 * C);
}

template <typename T>
void Stage<T>::set_recompute(const RecomputePolicy& policy) {
  TS_CHECK(!policy.cpu_checkpointing || policy.granularity == RecomputeGranularity::Full,
           "activation_checkpointing: cpu_checkpointing keeps full checkpoints on the host; set "
           "recompute_granularity to full");
  groups_ = plan_block_groups(policy, num_blocks());
  recompute_ = policy;
  kept_index_.assign(num_blocks(), -1);
  int kept = 0;
  for (const BlockGroup& g : groups_) {
    if (g.recompute) continue;
    for (int b = g.first; b < g.first + g.count; ++b) kept_index_[b] = kept++;
  }
}

template <typename T>
typename Stage<T>::Dropped Stage<T>::selective_drops() const {
  Dropped d;
  if (recompute_.granularity == RecomputeGranularity::Selective) {
    d.ln = true;
    // The forward computes GELU from the unrounded pre-activation; only when that is what is
    // stored does recomputing from the stored one give the same bits.
    d.gelu = ops_.same_storage();
  }
  return d;
}

template <typename T>
int Stage<T>::first_block() const {
  return has_embedding() ? 0 : (first_ - layers_.embedding_layers()) / kBlockParts;
}

template <typename T>
int Stage<T>::last_block() const {
  return has_head() ? config_.n_layer : (last_ - layers_.embedding_layers()) / kBlockParts;
}

template <typename T>
int64_t Stage<T>::stored_elems(int64_t n) const {
  const int64_t bytes = n * static_cast<int64_t>(ops_.storage_size());
  return (bytes + static_cast<int64_t>(sizeof(T)) - 1) / static_cast<int64_t>(sizeof(T));
}

template <typename T>
int64_t Stage<T>::place_block(T* base, int B, int seq_len, Dropped dropped, BlockActs* out) const {
  // cap: all the micro-batch's tokens (the tensor-parallel regions), rows: the residual
  // stream's (this rank's block under sequence parallelism); Ca, F: this rank's widths.
  const int64_t C = config_.n_embd, cap = int64_t{B} * seq_len, rows = residual_rows(B, seq_len);
  const int64_t Ca = layers_.local_width(), F = layers_.local_hidden();
  int64_t off = 0;
  // 64-byte aligned for float; a smaller batch uses each buffer's prefix.
  auto take = [&](int64_t elems) {
    T* at = base == nullptr ? nullptr : base + off;
    off += (elems + 15) / 16 * 16;
    return at;
  };
  auto take_stored = [&](int64_t n, bool drop) {
    return drop ? nullptr : static_cast<void*>(take(stored_elems(n)));
  };
  BlockActs a{};
  a.ln1 = take_stored(rows * C, dropped.ln);
  a.ln1_mean = take(rows);
  a.ln1_rstd = take(rows);
  a.qkv = take_stored(3 * cap * Ca, false);
  a.atty = take_stored(cap * Ca, false);
  a.lse = take(int64_t{B} * layers_.local_heads(config_.n_head) * seq_len);
  a.residual2 = take(rows * C);
  a.ln2 = take_stored(rows * C, dropped.ln);
  a.ln2_mean = take(rows);
  a.ln2_rstd = take(rows);
  a.fch = take_stored(cap * F, false);
  a.fch_gelu = take_stored(cap * F, dropped.gelu);
  a.residual3 = take(rows * C);
  a.recompute_ln = dropped.ln;
  a.recompute_gelu = dropped.gelu;
  if (out != nullptr) *out = a;
  return off;
}

template <typename T>
typename Stage<T>::Layout Stage<T>::plan(int slots, int B, int seq_len) const {
  TS_CHECK(slots >= 1 && B >= 1 && seq_len >= 1,
           "activation shape {} slot(s) of {}x{} must be positive", slots, B, seq_len);
  TS_CHECK(seq_len <= config_.block_size,
           "sequence length {} exceeds the model's block_size {}: lower data.seq_len or raise "
           "model.block_size",
           seq_len, config_.block_size);
  const int64_t BT = int64_t{B} * seq_len, C = config_.n_embd, V = config_.vocab_size;
  TS_CHECK(!sp() || BT % layers_.tp.size == 0,
           "sequence_parallel splits a micro-batch's {} x {} = {} tokens over "
           "tensor_model_parallel_size {}: make micro batch x seq_len divisible by it",
           B, seq_len, BT, layers_.tp.size);
  const int64_t R = residual_rows(B, seq_len), Ca = layers_.local_width(),
                F = layers_.local_hidden();
  const Dropped drops = selective_drops();
  Layout l;
  l.slots = slots;
  l.B = B;
  l.seq = seq_len;
  int64_t off = 0;
  auto place = [&](int64_t n) {
    const int64_t at = off;
    off += (n + 15) / 16 * 16;
    return at;
  };
  auto place_stored = [&](int64_t n) { return place(stored_elems(n)); };
  int kept_blocks = 0, largest_group = 0;
  for (const BlockGroup& g : groups_) {
    if (!g.recompute) kept_blocks += g.count;
    if (g.recompute) largest_group = std::max(largest_group, g.count);
  }
  // A recomputed group's output lives on the host when it is the next group's checkpoint
  // and cpu_checkpointing asks for it; otherwise on the device.
  auto on_host = [&](size_t g) {
    return recompute_.cpu_checkpointing && g + 1 < groups_.size() && groups_[g + 1].recompute;
  };
  // One slot.
  l.input = place(R * C);
  l.block_stride = place_block(nullptr, B, seq_len, drops, nullptr);
  l.blocks = place(int64_t{kept_blocks} * l.block_stride);
  l.group_out.assign(groups_.size(), -1);
  l.group_out_host.assign(groups_.size(), -1);
  int64_t host_off = 0;
  for (size_t g = 0; g < groups_.size(); ++g) {
    if (!groups_[g].recompute) continue;
    if (on_host(g)) {
      l.group_out_host[g] = host_off;
      host_off += (R * C + 15) / 16 * 16;
    } else {
      l.group_out[g] = place(R * C);
    }
  }
  l.host_slot_stride = host_off;
  if (has_head()) {
    l.lnf = place_stored(R * C);
    l.lnf_mean = place(R);
    l.lnf_rstd = place(R);
    l.losses = place(BT);
  }
  l.slot_stride = off;
  // Shared.
  off = int64_t{slots} * l.slot_stride;
  l.shared = off;
  // The head's logits: a chunk of rows over the whole vocabulary (the fused head), or every
  // row over a chunk of the vocabulary (chunked word embedding) with the rows' statistics.
  const bool chunked = layers_.chunked();
  const int64_t head_rows = chunked ? BT : std::min<int64_t>(BT, ops_.head_chunk_rows());
  const int64_t head_cols = chunked ? layers_.rows_per_chunk() : V;
  if (has_head()) l.head_scratch = place(head_rows * head_cols);
  if (has_head() && chunked) l.ce_stats = place((tp() ? 4 : 3) * BT);
  l.dres = place(R * C);
  l.dln = place(BT * C);
  l.dqkv = place(3 * BT * Ca);
  l.datty = place(BT * Ca);
  l.dfch = place(BT * F);
  // Also where selective recomputation refills a LayerNorm output (rows x C).
  l.dfch_gelu = place(std::max(BT * F, R * C));
  if (largest_group > 0) {
    l.full_block_stride = place_block(nullptr, B, seq_len, Dropped{}, nullptr);
    l.recompute_blocks = place(int64_t{largest_group} * l.full_block_stride);
    if (host_off > 0) l.boundary = place(R * C);
  }
  if (drops.ln) l.sel_ln = place_stored(R * C);
  if (drops.gelu) l.sel_gelu = place_stored(BT * F);
  if (sp()) {
    l.tp_full = place(BT * C);
    l.tp_gathered = place_stored(BT * C);
    l.tp_ln_grad = place(2 * C);
  }
  if (ops_.stages_gradients()) {
    // The largest gradient workspace but the embeddings': a block's layer or ln_f.
    int64_t layer_numel = 0;
    const int blocks_end = std::min(last_, layers_.lnf_layer() + 1);
    for (int layer = std::max(first_, layers_.embedding_layers()); layer < blocks_end; ++layer) {
      layer_numel = std::max(layer_numel, registry_.layer(layer).numel());
    }
    // The embeddings' workspace: layer 0 (whole, or one chunk) and, chunked, wpe's layer.
    int64_t embedding_numel = 0;
    for (int layer = 0; has_embedding() && layer < layers_.embedding_layers(); ++layer) {
      embedding_numel = std::max(embedding_numel, registry_.layer(layer).numel());
    }
    if (has_head()) l.lnf_wide = place(R * C);
    l.dout16 = place_stored(4 * BT * C);
    if (has_head()) l.head_scratch16 = place_stored(head_rows * head_cols);
    l.grad_ws = place(layer_numel);
    // A head copy's workspace too (the head's chunk or whole copy, reported at once).
    for (int k = 0; has_head() && layers_.head_copy && k < layers_.wte_chunks; ++k) {
      embedding_numel = std::max(embedding_numel, registry_.layer(layers_.head_layer(k)).numel());
    }
    if (embedding_numel > 0) l.grad_ws0 = place(embedding_numel);
    l.small = place(13 * C);
  }
  l.total = off;
  return l;
}

template <typename T>
void Stage<T>::allocate(int slots, int B, int seq_len) {
  layout_ = plan(slots, B, seq_len);
  arena_ = Storage(static_cast<size_t>(layout_.total) * sizeof(T), MemCategory::Activations,
                   ops_.device());
  const int64_t host = int64_t{slots} * layout_.host_slot_stride;
  host_checkpoints_ = host > 0 ? Storage(static_cast<size_t>(host) * sizeof(T),
                                         MemCategory::Activations)
                               : Storage();
}

template <typename T>
int64_t Stage<T>::activation_bytes_for(int slots, int B, int seq_len) const {
  const Layout l = plan(slots, B, seq_len);
  return (l.total + int64_t{slots} * l.host_slot_stride) * static_cast<int64_t>(sizeof(T));
}

template <typename T>
void Stage<T>::check_batch(int slot, int B, int seq_len) const {
  TS_CHECK(arena_.data() != nullptr, "the stage's activations are not allocated: call allocate()");
  TS_CHECK(slot >= 0 && slot < layout_.slots, "micro-batch slot {} is outside the {} allocated",
           slot, layout_.slots);
  TS_CHECK(B >= 1 && seq_len >= 1 && B <= layout_.B && seq_len <= layout_.seq,
           "batch {}x{} exceeds the activation arena sized for {}x{}", B, seq_len, layout_.B,
           layout_.seq);
}

template <typename T>
typename Stage<T>::BlockActs Stage<T>::block_acts(int slot, int block) {
  const int kept = kept_index_.at(block - first_block());
  TS_CHECK(kept >= 0, "block {} keeps no activations: it is recomputed", block);
  BlockActs a;
  place_block(slot_buf(slot, layout_.blocks + int64_t{kept} * layout_.block_stride), layout_.B,
              layout_.seq, selective_drops(), &a);
  if (a.recompute_ln) a.ln1 = a.ln2 = buf(layout_.sel_ln);
  if (a.recompute_gelu) a.fch_gelu = buf(layout_.sel_gelu);
  return a;
}

template <typename T>
typename Stage<T>::BlockActs Stage<T>::recompute_acts(int j) {
  BlockActs a;
  place_block(buf(layout_.recompute_blocks + int64_t{j} * layout_.full_block_stride), layout_.B,
              layout_.seq, Dropped{}, &a);
  return a;
}

template <typename T>
const T* Stage<T>::group_input(int slot, int g) {
  if (g == 0) return input(slot);
  const BlockGroup& prev = groups_[g - 1];
  if (!prev.recompute) return block_acts(slot, first_block() + prev.first + prev.count - 1).residual3;
  if (layout_.group_out[g - 1] >= 0) return slot_buf(slot, layout_.group_out[g - 1]);
  // A host checkpoint: back to the device first.
  const int64_t BTC = residual_rows(layout_.B, layout_.seq) * config_.n_embd;
  T* host = static_cast<T*>(host_checkpoints_.data()) + int64_t{slot} * layout_.host_slot_stride +
            layout_.group_out_host[g - 1];
  ops_.from_host(buf(layout_.boundary), host, BTC);
  return buf(layout_.boundary);
}

template <typename T>
const T* Stage<T>::block_input(int slot, int block) {
  const int b = block - first_block();
  for (size_t g = 0; g < groups_.size(); ++g) {
    if (groups_[g].first == b) return group_input(slot, static_cast<int>(g));
  }
  return block_acts(slot, block - 1).residual3;
}

template <typename T>
T* Stage<T>::input(int slot) {
  return slot_buf(slot, layout_.input);
}

template <typename T>
const T* Stage<T>::output(int slot) {
  if (groups_.empty()) return input(slot);
  const size_t g = groups_.size() - 1;
  if (groups_[g].recompute) return slot_buf(slot, layout_.group_out[g]);
  return block_acts(slot, last_block() - 1).residual3;
}

template <typename T>
typename Stage<T>::PartOffsets Stage<T>::part_offsets(BlockPart part) const {
  const int64_t C = config_.n_embd, Ca = layers_.local_width(), F = layers_.local_hidden();
  // Registry order within each layer (build_gpt_registry), this rank's widths; `small` is
  // where a 16-bit table widens the layer's small tensors, within the 13 C of layout_.small.
  switch (part) {
    case kAttentionIn:
      return {0, C, 2 * C, 2 * C + 3 * Ca * C, 0};
    case kAttentionOut:
      return {-1, -1, 0, C * Ca, 5 * C};
    case kMlpIn:
      return {0, C, 2 * C, 2 * C + F * C, 6 * C};
    case kMlpOut:
      return {-1, -1, 0, C * F, 12 * C};
  }
  TS_THROW(Error, "no block part {}", static_cast<int>(part));
}

template <typename T>
int64_t Stage<T>::part_bias_size(BlockPart part) const {
  const int64_t C = config_.n_embd;
  return part == kAttentionIn ? 3 * layers_.local_width()
         : part == kMlpIn     ? layers_.local_hidden()
                              : C;
}

template <typename T>
typename Stage<T>::PartWeights Stage<T>::acquire_part(ParamAccess& params, int block,
                                                      BlockPart part) {
  const int64_t C = config_.n_embd;
  const void* base = params.acquire(layers_.block_layer(block, part));
  const PartOffsets o = part_offsets(part);
  PartWeights w{};
  w.matrix = ops_.at(base, o.matrix);
  T* cursor = buf(layout_.small) + o.small;  // used only by tables with 16-bit storage
  auto small = [&](int64_t at, int64_t n) {
    const T* v = ops_.view(ops_.at(base, at), cursor, n);
    cursor += n;
    return v;
  };
  if (o.ln_weight >= 0) {
    w.ln_weight = small(o.ln_weight, C);
    w.ln_bias = small(o.ln_bias, C);
  }
  w.bias = small(o.bias, part_bias_size(part));
  return w;
}

template <typename T>
void Stage<T>::release_part(ParamAccess& params, int block, BlockPart part) {
  params.release(layers_.block_layer(block, part));
}

template <typename T>
typename Stage<T>::PartGrads Stage<T>::open_part_grads(ParamAccess& params, int block,
                                                       BlockPart part) {
  T* base = open_grads(params, layers_.block_layer(block, part), buf(layout_.grad_ws));
  const PartOffsets o = part_offsets(part);  // gradients share the parameters' layout
  PartGrads g{};
  g.matrix = base + o.matrix;
  g.bias = base + o.bias;
  if (o.ln_weight >= 0) {
    g.ln_weight = base + o.ln_weight;
    g.ln_bias = base + o.ln_bias;
  }
  return g;
}

template <typename T>
void Stage<T>::close_part_grads(ParamAccess& params, int block, BlockPart part) {
  close_grads(params, layers_.block_layer(block, part), buf(layout_.grad_ws));
}

template <typename T>
T* Stage<T>::open_grads(ParamAccess& params, int layer, T* workspace) {
  if (!ops_.stages_gradients()) return static_cast<T*>(params.grads(layer));
  ops_.zero(workspace, registry_.layer(layer).numel());
  return workspace;
}

template <typename T>
void Stage<T>::close_grads(ParamAccess& params, int layer, T* workspace) {
  if (ops_.stages_gradients()) {
    ops_.accumulate(params.grads(layer), workspace, registry_.layer(layer).numel());
  }
  params.grads_ready(layer);
}

template <typename T>
void Stage<T>::block_forward(ParamAccess& params, int block, const BlockActs& a, const T* input,
                             int B, int seq_len) {
  const int64_t BT = int64_t{B} * seq_len, C = config_.n_embd, R = residual_rows(B, seq_len);
  const int64_t Ca = layers_.local_width(), F = layers_.local_hidden();
  const int heads = layers_.local_heads(config_.n_head);
  kernels::Ops<T>& o = ops_;
  // Each GEMM's layer is gathered just for it. Results kept in 16 bits are computed in
  // backward's scratch buffers first. Tensor parallelism: this rank's heads and hidden
  // columns; the LayerNorms and the residual stream over this rank's R rows.
  PartWeights w = acquire_part(params, block, kAttentionIn);
  T* ln1 = o.target(a.ln1, buf(layout_.dln));
  o.layernorm_forward(ln1, a.ln1_mean, a.ln1_rstd, input, w.ln_weight, w.ln_bias, R, C);
  o.save(a.ln1, ln1, R * C);
  T* qkv = o.target(a.qkv, buf(layout_.dqkv));
  o.linear_forward(qkv, gather_ln(a.ln1, B, seq_len), w.matrix, w.bias, BT, C, 3 * Ca);
  o.save(a.qkv, qkv, 3 * BT * Ca);
  release_part(params, block, kAttentionIn);
  // Attention reads q, k, v as backward will, as stored: the log-sum-exp it saves then
  // matches the probabilities backward recomputes.
  const T* qkv_stored = o.view(a.qkv, qkv, 3 * BT * Ca);
  T* atty = o.target(a.atty, buf(layout_.dln));
  o.attention_forward(atty, a.lse, qkv_stored, B, seq_len, static_cast<int>(Ca), heads);
  o.save(a.atty, atty, BT * Ca);
  // The projection is written straight into the residual stream and the input added in
  // place: backward never needs the projection's output on its own.
  w = acquire_part(params, block, kAttentionOut);
  row_parallel_forward(a.residual2, a.atty, w, B, seq_len, Ca);
  release_part(params, block, kAttentionOut);
  o.residual_forward(a.residual2, a.residual2, input, R * C);
  w = acquire_part(params, block, kMlpIn);
  T* ln2 = o.target(a.ln2, buf(layout_.dln));
  o.layernorm_forward(ln2, a.ln2_mean, a.ln2_rstd, a.residual2, w.ln_weight, w.ln_bias, R, C);
  o.save(a.ln2, ln2, R * C);
  T* fch = o.target(a.fch, buf(layout_.dfch));
  o.linear_forward(fch, gather_ln(a.ln2, B, seq_len), w.matrix, w.bias, BT, C, F);
  o.save(a.fch, fch, BT * F);
  release_part(params, block, kMlpIn);
  T* gelu = o.target(a.fch_gelu, buf(layout_.dfch_gelu));
  o.gelu_forward(gelu, fch, BT * F);
  o.save(a.fch_gelu, gelu, BT * F);
  w = acquire_part(params, block, kMlpOut);
  row_parallel_forward(a.residual3, a.fch_gelu, w, B, seq_len, F);
  release_part(params, block, kMlpOut);
  o.residual_forward(a.residual3, a.residual3, a.residual2, R * C);
}

template <typename T>
void Stage<T>::block_backward(ParamAccess& params, int block, const BlockActs& a, const T* input,
                              int B, int seq_len) {
  const int64_t BT = int64_t{B} * seq_len, C = config_.n_embd, R = residual_rows(B, seq_len);
  const int64_t Ca = layers_.local_width(), F = layers_.local_hidden();
  const int heads = layers_.local_heads(config_.n_head);
  kernels::Ops<T>& o = ops_;
  T* dres = buf(layout_.dres);  // dL/d(block output) on entry, dL/d(input) on exit (R rows)
  T* dln = buf(layout_.dln);
  T* dqkv = buf(layout_.dqkv);
  T* datty = buf(layout_.datty);
  T* dfch = buf(layout_.dfch);
  T* dfch_gelu = buf(layout_.dfch_gelu);
  void* dout16 = buf(layout_.dout16);  // a GEMM's output gradient, rounded (16-bit storage)
  // MLP branch: residual3 = residual2 + mlp(ln2(residual2)); the residual stream's gradient
  // passes through unchanged and the branch adds its part.
  if (a.recompute_gelu) {  // selective: only where storage is T (Stage::selective_drops)
    o.gelu_forward(o.target(a.fch_gelu, nullptr), o.view(a.fch, nullptr, BT * F), BT * F);
  }
  PartWeights w = acquire_part(params, block, kMlpOut);
  PartGrads g = open_part_grads(params, block, kMlpOut);
  o.zero(dfch_gelu, BT * F);
  o.linear_backward(dfch_gelu, g.matrix, g.bias, gather_residual_grad(dres, B, seq_len), dout16,
                    a.fch_gelu, w.matrix, BT, F, C);
  release_part(params, block, kMlpOut);
  close_part_grads(params, block, kMlpOut);
  w = acquire_part(params, block, kMlpIn);
  g = open_part_grads(params, block, kMlpIn);
  o.zero(dfch, BT * F);
  o.gelu_backward(dfch, a.fch, dfch_gelu, BT * F);
  // Selective recomputation refills the LayerNorm outputs (and their statistics, the same
  // values) through dfch_gelu, free once GELU's backward has read it.
  if (a.recompute_ln) {
    T* ln2 = o.target(a.ln2, dfch_gelu);
    o.layernorm_forward(ln2, a.ln2_mean, a.ln2_rstd, a.residual2, w.ln_weight, w.ln_bias, R, C);
    o.save(a.ln2, ln2, R * C);
  }
  const T* dln2 =
      column_parallel_backward(g, w, dfch, gather_ln(a.ln2, B, seq_len), B, seq_len, F);
  layernorm_backward_tp(dres, g.ln_weight, g.ln_bias, dln2, a.residual2, w.ln_weight,
                        a.ln2_mean, a.ln2_rstd, R);
  release_part(params, block, kMlpIn);
  close_part_grads(params, block, kMlpIn);
  // Attention branch: residual2 = input + proj(attn(ln1(input))).
  w = acquire_part(params, block, kAttentionOut);
  g = open_part_grads(params, block, kAttentionOut);
  o.zero(datty, BT * Ca);
  o.linear_backward(datty, g.matrix, g.bias, gather_residual_grad(dres, B, seq_len), dout16,
                    a.atty, w.matrix, BT, Ca, C);
  release_part(params, block, kAttentionOut);
  close_part_grads(params, block, kAttentionOut);
  // Attention's saved input and output in T: widened on 16-bit tables into buffers that are
  // free until further down.
  const T* atty = o.view(a.atty, dln, BT * Ca);
  const T* qkv = o.view(a.qkv, dfch, 3 * BT * Ca);
  o.zero(dqkv, 3 * BT * Ca);
  o.attention_backward(dqkv, datty, qkv, atty, a.lse, B, seq_len, static_cast<int>(Ca), heads);
  w = acquire_part(params, block, kAttentionIn);
  g = open_part_grads(params, block, kAttentionIn);
  if (a.recompute_ln) {
    T* ln1 = o.target(a.ln1, dfch_gelu);
    o.layernorm_forward(ln1, a.ln1_mean, a.ln1_rstd, input, w.ln_weight, w.ln_bias, R, C);
    o.save(a.ln1, ln1, R * C);
  }
  const T* dln1 =
      column_parallel_backward(g, w, dqkv, gather_ln(a.ln1, B, seq_len), B, seq_len, 3 * Ca);
  layernorm_backward_tp(dres, g.ln_weight, g.ln_bias, dln1, input, w.ln_weight, a.ln1_mean,
                        a.ln1_rstd, R);
  release_part(params, block, kAttentionIn);
  close_part_grads(params, block, kAttentionIn);
}

template <typename T>
const T* Stage<T>::forward_group(ParamAccess& params, int slot, int g, const T* input, int B,
                                 int seq_len, bool keep_output) {
  const BlockGroup& group = groups_[g];
  const T* h = input;
  for (int j = 0; j < group.count; ++j) {
    const int block = first_block() + group.first + j;
    const BlockActs a = group.recompute ? recompute_acts(j) : block_acts(slot, block);
    block_forward(params, block, a, h, B, seq_len);
    h = a.residual3;
  }
  if (!group.recompute || !keep_output) return h;
  // The recomputed group's output outlives its working set: the next group's input (its
  // checkpoint, if that group is recomputed too) or the stage's output.
  const int64_t BTC = residual_rows(B, seq_len) * config_.n_embd;
  if (layout_.group_out[g] >= 0) {
    T* kept = slot_buf(slot, layout_.group_out[g]);
    ops_.copy(kept, h, BTC);
    return kept;
  }
  T* host = static_cast<T*>(host_checkpoints_.data()) + int64_t{slot} * layout_.host_slot_stride +
            layout_.group_out_host[g];
  ops_.copy(buf(layout_.boundary), h, BTC);
  ops_.to_host(host, buf(layout_.boundary), BTC);
  return buf(layout_.boundary);
}

template <typename T>
void Stage<T>::forward(ParamAccess& params, int slot, const int32_t* tokens, int B, int seq_len) {
  check_batch(slot, B, seq_len);
  const int64_t C = config_.n_embd, R = residual_rows(B, seq_len);
  TS_CHECK(!tp() || tp_group_ != nullptr,
           "a tensor-parallel stage needs its group: call set_tensor_parallel first");
  T* x = input(slot);
  if (has_embedding()) {
    TS_CHECK(tokens != nullptr, "the first stage's forward needs the input tokens");
    embedding_forward(params, x, tokens, B, seq_len);
  }
  const T* h = x;
  for (int g = 0; g < static_cast<int>(groups_.size()); ++g) {
    h = forward_group(params, slot, g, h, B, seq_len, /*keep_output=*/true);
  }
  if (has_head()) {
    const int lnf_layer = layers_.lnf_layer();
    const void* stored = params.acquire(lnf_layer);
    const T* lnf_w = ops_.view(stored, buf(layout_.small), 2 * C);
    void* lnf = slot_buf(slot, layout_.lnf);
    T* out = ops_.target(lnf, buf(layout_.lnf_wide));
    ops_.layernorm_forward(out, slot_buf(slot, layout_.lnf_mean), slot_buf(slot, layout_.lnf_rstd),
                           h, lnf_w, lnf_w + C, R, C);
    params.release(lnf_layer);
    ops_.save(lnf, out, R * C);
  }
}

template <typename T>
double Stage<T>::head(ParamAccess& params, int slot, const int32_t* targets, int B, int seq_len,
                      bool backward, double grad_scale) {
  check_batch(slot, B, seq_len);
  TS_CHECK(has_head(), "head() runs on the last stage only");
  TS_CHECK(targets != nullptr, "the loss needs targets");
  if (layers_.chunked())
    return chunked_head(params, slot, targets, B, seq_len, backward, grad_scale);
  const int64_t BT = int64_t{B} * seq_len, C = config_.n_embd, V = config_.vocab_size;
  T* dlnf = nullptr;
  T* dwte = nullptr;
  const int head = layers_.head_layer(0);
  const void* wte = params.acquire(head);
  if (backward) {
    dlnf = buf(layout_.dln);
    ops_.zero(dlnf, BT * C);
    // Tied in place, layer 0's gradients stay open through backward: the head adds wte's
    // gradient now, the embedding its rows at the end. A head copy's close at once.
    dwte = open_grads(params, head, buf(layout_.grad_ws0));
    ws0_open_ = !layers_.head_copy;
    head_ran_ = true;
  }
  const double loss_sum = ops_.lm_head_cross_entropy(
      dlnf, dwte, slot_buf(slot, layout_.losses), slot_buf(slot, layout_.lnf), wte, targets, BT, C,
      V, grad_scale / static_cast<double>(BT), buf(layout_.head_scratch),
      buf(layout_.head_scratch16));
  params.release(head);
  if (backward && layers_.head_copy) close_grads(params, head, buf(layout_.grad_ws0));
  return loss_sum;
}

template <typename T>
double Stage<T>::chunked_head(ParamAccess& params, int slot, const int32_t* targets, int B,
                              int seq_len, bool backward, double grad_scale) {
  const int64_t BT = int64_t{B} * seq_len, C = config_.n_embd;
  // The final LayerNorm's output over every row (gathered under sequence parallelism).
  const void* x = gather_ln(slot_buf(slot, layout_.lnf), B, seq_len);
  T* logits = buf(layout_.head_scratch);  // [BT, rows of a chunk]
  T* lse = buf(layout_.ce_stats);         // the running max, then the log-sum-exp
  T* sum = lse + BT;
  T* target_logit = sum + BT;
  // Pass 1: the softmax statistics of every row, a vocabulary chunk at a time (of this
  // rank's slice; chunks holding only padding are skipped: padding never enters the softmax).
  // A row with sum 0 has no chunk folded in yet (cross_entropy_fold): its max is not read.
  ops_.zero(lse, BT);
  ops_.zero(sum, BT);
  ops_.zero(target_logit, BT);
  for (int k = 0; k < layers_.wte_chunks; ++k) {
    const int layer = layers_.head_layer(k);
    const int64_t rows = layers_.chunk_rows(k);
    const void* wte_k = params.acquire(layer);
    if (rows > 0) {
      ops_.linear_forward(logits, x, wte_k, nullptr, BT, C, rows);
      ops_.cross_entropy_fold(lse, sum, target_logit, logits, targets, BT, rows,
                              layers_.chunk_begin(k));
    }
    params.release(layer);
  }
  if (tp()) {
    // Vocabulary parallelism: the group's max of each row, every rank's sum made relative to
    // it, then the sums and the target logits (zero where a rank does not hold the target)
    // summed in one all-reduce: the whole row's statistics on every rank.
    T* global_max = target_logit + BT;
    ops_.cross_entropy_mask_empty(lse, sum, BT);
    parallel::AllreduceOptions max_op;
    max_op.op = parallel::ReduceOp::Max;
    tp_group_->all_reduce(lse, global_max, static_cast<size_t>(BT), DType::F32, max_op)->wait();
    ops_.cross_entropy_rescale(lse, sum, global_max, BT);
    tp_sum(sum, 2 * BT);  // sum and target_logit, adjacent
  }
  const double loss_sum =
      ops_.cross_entropy_finish(lse, slot_buf(slot, layout_.losses), sum, target_logit, BT);
  if (!backward) return loss_sum;
  // Pass 2: each chunk's logits again, turned into their gradient: dlnf += dlogits wte_k,
  // wte_k's gradient += dlogits^T lnf, reported at once (tied in place, the embedding adds
  // its rows later).
  T* dlnf = buf(layout_.dln);
  ops_.zero(dlnf, BT * C);
  const T scale = static_cast<T>(grad_scale / static_cast<double>(BT));
  for (int k = 0; k < layers_.wte_chunks; ++k) {
    const int layer = layers_.head_layer(k);
    const int64_t rows = layers_.chunk_rows(k);
    const void* wte_k = params.acquire(layer);
    T* dwte_k = open_grads(params, layer, buf(layout_.grad_ws0));
    if (rows > 0) {
      ops_.linear_forward(logits, x, wte_k, nullptr, BT, C, rows);
      ops_.cross_entropy_chunk_backward(logits, lse, targets, BT, rows, layers_.chunk_begin(k),
                                        scale);
      ops_.linear_backward(dlnf, dwte_k, nullptr, logits, buf(layout_.head_scratch16), x, wte_k,
                           BT, C, rows);
    }
    params.release(layer);
    close_grads(params, layer, buf(layout_.grad_ws0));
  }
  if (tp()) {
    // The head is a column-parallel linear over the vocabulary: its input gradient is summed
    // over the group (this rank's rows of it under sequence parallelism, where backward reads
    // them from dln's start).
    if (sp()) {
      const int64_t R = residual_rows(B, seq_len);
      T* mine = buf(layout_.tp_full);
      parallel::tp::gather_sequence_backward(*tp_group_, dlnf, mine, static_cast<size_t>(R * C),
                                             DType::F32)
          ->wait();
      ops_.copy(dlnf, mine, R * C);
    } else {
      parallel::tp::copy_to_region_backward(*tp_group_, dlnf, static_cast<size_t>(BT * C),
                                            DType::F32)
          ->wait();
    }
  }
  head_ran_ = true;  // the head's part is in: backward may run
  return loss_sum;
}

template <typename T>
void Stage<T>::embedding_forward(ParamAccess& params, T* x, const int32_t* tokens, int B,
                                 int seq_len) {
  const int64_t C = config_.n_embd, V = config_.vocab_size, BT = int64_t{B} * seq_len;
  if (!layers_.chunked()) {
    const void* emb = params.acquire(0);
    ops_.embedding_forward(x, tokens, emb, ops_.at(emb, V * C), B, seq_len, static_cast<int>(C));
    params.release(0);
    return;
  }
  // Vocabulary parallelism: each rank adds the rows of the tokens it holds (the positions on
  // group rank 0 only) and the sum over the group is the embedding, scattered by rows under
  // sequence parallelism.
  T* e = sp() ? buf(layout_.tp_full) : x;
  if (!tp() || layers_.tp.rank == 0) {
    ops_.position_embedding_forward(e, params.acquire(layers_.wpe_layer()), B, seq_len,
                                    static_cast<int>(C));
    params.release(layers_.wpe_layer());
  } else {
    ops_.zero(e, BT * C);
  }
  for (int k = 0; k < layers_.wte_chunks; ++k) {
    const int layer = layers_.wte_layer(k);
    ops_.token_embedding_rows_forward(e, tokens, params.acquire(layer), layers_.chunk_begin(k),
                                      layers_.chunk_rows(k), BT, static_cast<int>(C));
    params.release(layer);
  }
  if (sp()) {
    parallel::tp::reduce_scatter_sequence_forward(
        *tp_group_, e, x, static_cast<size_t>(residual_rows(B, seq_len) * C), DType::F32)
        ->wait();
  } else if (tp()) {
    tp_sum(x, BT * C);
  }
}

template <typename T>
void Stage<T>::embedding_backward(ParamAccess& params, const int32_t* tokens, int B, int seq_len) {
  const int64_t C = config_.n_embd, V = config_.vocab_size;
  const T* dres = buf(layout_.dres);
  T* ws0 = buf(layout_.grad_ws0);
  if (!layers_.chunked()) {
    T* demb = ws0_open_ && ops_.stages_gradients() ? ws0 : open_grads(params, 0, ws0);
    ops_.embedding_backward(demb, demb + V * C, dres, tokens, B, seq_len, static_cast<int>(C));
    ws0_open_ = false;
    close_grads(params, 0, ws0);
    return;
  }
  // Every row's gradient (gathered under sequence parallelism): the positions' gradients are
  // then whole on every rank, and each rank adds its vocabulary rows'.
  dres = gather_residual_grad(dres, B, seq_len);
  T* dwpe = open_grads(params, layers_.wpe_layer(), ws0);
  ops_.position_embedding_backward(dwpe, dres, B, seq_len, static_cast<int>(C));
  close_grads(params, layers_.wpe_layer(), ws0);
  for (int k = 0; k < layers_.wte_chunks; ++k) {
    const int layer = layers_.wte_layer(k);
    T* dwte_k = open_grads(params, layer, ws0);
    ops_.token_embedding_rows_backward(dwte_k, dres, tokens, layers_.chunk_begin(k),
                                       layers_.chunk_rows(k), int64_t{B} * seq_len,
                                       static_cast<int>(C));
    close_grads(params, layer, ws0);
  }
}

template <typename T>
void Stage<T>::backward(ParamAccess& params, int slot, const int32_t* tokens, int B, int seq_len) {
  check_batch(slot, B, seq_len);
  const int64_t C = config_.n_embd, R = residual_rows(B, seq_len);
  T* dres = buf(layout_.dres);
  T* ws = buf(layout_.grad_ws);
  if (has_head()) {
    TS_CHECK(head_ran_, "the last stage's backward needs head(..., backward = true) first");
    head_ran_ = false;
    const int lnf_layer = layers_.lnf_layer();
    const T* lnf_w = ops_.view(params.acquire(lnf_layer), buf(layout_.small), 2 * C);
    T* g = open_grads(params, lnf_layer, ws);
    ops_.zero(dres, R * C);
    layernorm_backward_tp(dres, g, g + C, buf(layout_.dln), output(slot), lnf_w,
                          slot_buf(slot, layout_.lnf_mean), slot_buf(slot, layout_.lnf_rstd), R);
    params.release(lnf_layer);
    close_grads(params, lnf_layer, ws);
  }
  for (int g = static_cast<int>(groups_.size()) - 1; g >= 0; --g) {
    const BlockGroup& group = groups_[g];
    const int first = first_block() + group.first;
    if (!group.recompute) {
      for (int block = first + group.count - 1; block >= first; --block) {
        block_backward(params, block, block_acts(slot, block), block_input(slot, block), B,
                       seq_len);
      }
      continue;
    }
    // Checkpointed: re-run the group's forward from its input, then its backward.
    const T* in = group_input(slot, g);
    forward_group(params, slot, g, in, B, seq_len, /*keep_output=*/false);
    for (int j = group.count - 1; j >= 0; --j) {
      block_backward(params, first + j, recompute_acts(j),
                     j > 0 ? recompute_acts(j - 1).residual3 : in, B, seq_len);
    }
  }
  if (has_embedding()) {
    TS_CHECK(tokens != nullptr, "the first stage's backward needs the input tokens");
    embedding_backward(params, tokens, B, seq_len);
  }
}

template <typename T>
void Stage<T>::logits_at(ParamAccess& params, int slot, int b, int t, int seq_len, T* out) {
  TS_CHECK(has_head(), "logits come from the last stage");
  TS_CHECK(!tp(), "logits_at reads a row's whole logits, which a tensor-parallel rank never "
                  "forms: sample from the gathered weights (Trainer::whole_weights)");
  const int64_t C = config_.n_embd, V = config_.vocab_size;
  const int64_t row = (int64_t{b} * seq_len + t) * C;
  const void* x = ops_.at(slot_buf(slot, layout_.lnf), row);
  if (!layers_.chunked()) {
    ops_.linear_forward(out, x, params.acquire(layers_.head_layer(0)), nullptr, 1, C, V);
    params.release(layers_.head_layer(0));
    return;
  }
  for (int k = 0; k < layers_.wte_chunks; ++k) {
    const int layer = layers_.head_layer(k);
    ops_.linear_forward(out + layers_.chunk_begin(k), x, params.acquire(layer), nullptr, 1, C,
                        layers_.chunk_rows(k));
    params.release(layer);
  }
}

template class Stage<float>;
template class Stage<double>;

}  // namespace tessera::models
