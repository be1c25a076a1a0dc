// How the GPT's parameters are numbered into layers: the unit of acquire / release /
// grads_ready, so of a ZeRO-3 gather and of a gradient report.
//
//   embeddings  wte and wpe in layer 0, or (wte_chunks > 1) wte split by rows into layers
//               0..K-1 and wpe in layer K: ZeRO-3 then gathers the word embedding (and the
//               head it is tied to) a chunk at a time instead of whole;
//   blocks      four layers each, in registry order: [ln_1, attn.c_attn], [attn.c_proj],
//               [ln_2, mlp.c_fc], [mlp.c_proj]: one GEMM's weights per layer, so a gathered
//               layer and a gradient slot are a matrix, not a block;
//   ln_f        after the blocks;
//   tensor parallelism (TpLayout, t > 1): every layer holds this rank's part of its parameters
//               (models/gpt.h says which), the word embedding its vocabulary slice in layers of
//               its own as when chunked (wpe after it), so the head always runs the
//               vocabulary-split cross-entropy;
//   lm_head     only with head_copy: the head's own copy of the word embedding, in as many
//               layers as wte, for a last pipeline stage that does not hold the embedding.
//               The copy and wte are tied by summing their gradients (tied_layers(), what
//               Megatron's embedding group all-reduces) and start from the same values.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "models/gpt_config.h"

namespace tessera::models {

// A block's layers, in forward order.
enum BlockPart : int { kAttentionIn = 0, kAttentionOut = 1, kMlpIn = 2, kMlpOut = 3 };
inline constexpr int kBlockParts = 4;

// This rank's place in the tensor-parallel group (Megatron's layout): size t, rank r.
struct TpLayout {
  int size = 1;
  int rank = 0;
  bool sequence_parallel = false;  // LayerNorm and residual regions hold rows / t tokens
  bool active() const { return size > 1; }
};

// The blocks a pipeline rank holds: blocks [first, second) for each of its model chunks (its
// virtual stages), in chunk order. Empty: the whole model, one stage. The chunk starting at
// block 0 holds the embeddings, the one ending at n_layer ln_f and the head, on the head's own
// copy of the word embedding (GptLayers::head_copy), as Megatron's last stage does.
struct PipelinePart {
  std::vector<std::pair<int, int>> chunks;
  bool active() const { return !chunks.empty(); }
};

// Megatron's make-vocab-size-divisible-by: with t > 1 the vocabulary is padded to a multiple
// of 128 t so every rank holds the same rows; t = 1 keeps the model's own vocabulary.
inline int64_t padded_vocab(int64_t vocab, int tp_size) {
  if (tp_size <= 1) return vocab;
  const int64_t multiple = int64_t{128} * tp_size;
  return (vocab + multiple - 1) / multiple * multiple;
}

struct GptLayers {
  // Asks for `chunks` word-embedding chunks of equal rows (the last may hold fewer); fewer
  // result when the rows do not divide so (10 rows in 6 chunks: 5 chunks of 2). With tensor
  // parallelism the chunks split this rank's vocabulary slice.
  explicit GptLayers(const GPTConfig& config, int chunks = 1, bool head_copy_ = false,
                     TpLayout tp_ = {})
      : n_layer(config.n_layer), n_embd(config.n_embd), vocab(config.vocab_size),
        head_copy(head_copy_), tp(tp_) {
    vocab_rows = padded_vocab(vocab, tp.size) / tp.size;
    vocab_begin = vocab_rows * tp.rank;
    const int64_t asked = chunks < 1 ? 1 : (chunks > vocab_rows ? vocab_rows : chunks);
    chunk_rows_ = (vocab_rows + asked - 1) / asked;
    wte_chunks = static_cast<int>((vocab_rows + chunk_rows_ - 1) / chunk_rows_);
  }

  int wte_chunks = 1;
  int n_layer = 0;
  int n_embd = 0;
  int64_t vocab = 0;        // the model's vocabulary
  bool head_copy = false;
  TpLayout tp;
  int64_t vocab_rows = 0;   // word-embedding rows this rank holds (padding included)
  int64_t vocab_begin = 0;  // the token id of its first

  // The embedding in layers of its own (wpe apart): in chunks, or a vocabulary slice.
  bool chunked() const { return wte_chunks > 1 || tp.active(); }
  // Per rank: attention heads, their width (q, k or v) and the MLP's hidden width.
  int local_heads(int n_head) const { return n_head / tp.size; }
  int64_t local_width() const { return n_embd / tp.size; }
  int64_t local_hidden() const { return int64_t{4} * n_embd / tp.size; }
  int embedding_layers() const { return chunked() ? wte_chunks + 1 : 1; }
  int wte_layer(int chunk) const { return chunk; }
  int wpe_layer() const { return chunked() ? wte_chunks : 0; }
  // Chunk k holds the tokens [chunk_begin(k), chunk_begin(k) + chunk_rows(k)) in its first
  // rows, then (tensor parallelism, the last rank) padding up to chunk_stored_rows(k).
  int64_t chunk_begin(int k) const { return vocab_begin + int64_t{k} * chunk_rows_; }
  int64_t chunk_stored_rows(int k) const {
    const int64_t local = int64_t{k} * chunk_rows_;
    return local + chunk_rows_ <= vocab_rows ? chunk_rows_ : vocab_rows - local;
  }
  int64_t chunk_rows(int k) const {
    const int64_t real = vocab - chunk_begin(k);
    return real <= 0 ? 0 : (real < chunk_stored_rows(k) ? real : chunk_stored_rows(k));
  }
  int64_t rows_per_chunk() const { return chunk_rows_; }
  int block_layer(int block, BlockPart part) const {
    return embedding_layers() + kBlockParts * block + part;
  }
  int first_layer_of_block(int block) const { return block_layer(block, kAttentionIn); }
  int lnf_layer() const { return embedding_layers() + kBlockParts * n_layer; }
  // The layers [stage_first_layer(b0), stage_last_layer(b1)) of a stage holding blocks
  // [b0, b1): the embeddings before block 0, ln_f (and a head copy) after the last block.
  int stage_first_layer(int begin_block) const {
    return begin_block == 0 ? 0 : first_layer_of_block(begin_block);
  }
  int stage_last_layer(int end_block) const {
    return end_block == n_layer ? num_layers() : first_layer_of_block(end_block);
  }
  bool holds(const PipelinePart& part, int layer) const {
    if (!part.active()) return true;
    for (const auto& [b0, b1] : part.chunks) {
      if (layer >= stage_first_layer(b0) && layer < stage_last_layer(b1)) return true;
    }
    return false;
  }
  // The layer the head reads chunk k of its weights from: wte's, or its copy's.
  int head_layer(int chunk) const { return head_copy ? lnf_layer() + 1 + chunk : wte_layer(chunk); }
  int num_layers() const { return lnf_layer() + 1 + (head_copy ? wte_chunks : 0); }
  // head_copy: the first `elems` elements of wte_layer and of head_layer are the same rows
  // of the word embedding (wte leads layer 0 when wpe shares it); their gradients are summed
  // into both.
  struct Tied {
    int wte_layer, head_layer;
    int64_t elems;
  };
  std::vector<Tied> tied_layers() const {
    std::vector<Tied> tied;
    for (int k = 0; head_copy && k < wte_chunks; ++k) {
      tied.push_back({wte_layer(k), head_layer(k), chunk_stored_rows(k) * n_embd});
    }
    return tied;
  }

 private:
  int64_t chunk_rows_ = 0;
};

// How many chunks ZeRO-3 splits the word embedding into: chunks the size of a block's largest
// layer (mlp.c_fc, 4 C^2 + 4 C elements), so that a gathered layer or a gradient slot is never
// the whole vocabulary; 1 (one layer and the fused head) when the embedding holds no more
// than four such layers, where chunking would only add passes (the small presets).
// With tensor parallelism, of this rank's vocabulary slice and largest layer.
inline int zero3_wte_chunks(const GPTConfig& config, int tp_size = 1) {
  const int64_t C = config.n_embd;
  const int64_t layer = (4 * C * C + 4 * C) / tp_size;
  const int64_t rows = padded_vocab(config.vocab_size, tp_size) / tp_size;
  const int64_t chunks = (rows * C + layer - 1) / layer;
  return chunks > 4 ? static_cast<int>(chunks) : 1;
}

}  // namespace tessera::models
