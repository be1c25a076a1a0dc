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
//   lm_head     only with head_copy: the head's own copy of the word embedding, in as many
//               layers as wte, for a last pipeline stage that does not hold the embedding.
//               The copy and wte are tied by summing their gradients (tied_layers(), what
//               Megatron's embedding group all-reduces) and start from the same values.
#pragma once

#include <cstdint>
#include <vector>

#include "models/gpt_config.h"

namespace tessera::models {

// A block's layers, in forward order.
enum BlockPart : int { kAttentionIn = 0, kAttentionOut = 1, kMlpIn = 2, kMlpOut = 3 };
inline constexpr int kBlockParts = 4;

struct GptLayers {
  // Asks for `chunks` word-embedding chunks of equal rows (the last may hold fewer); fewer
  // result when the rows do not divide so (10 rows in 6 chunks: 5 chunks of 2).
  explicit GptLayers(const GPTConfig& config, int chunks = 1, bool head_copy_ = false)
      : n_layer(config.n_layer), n_embd(config.n_embd), vocab(config.vocab_size),
        head_copy(head_copy_) {
    const int64_t asked = chunks < 1 ? 1 : (chunks > vocab ? vocab : chunks);
    chunk_rows_ = (vocab + asked - 1) / asked;
    wte_chunks = static_cast<int>((vocab + chunk_rows_ - 1) / chunk_rows_);
  }

  int wte_chunks = 1;
  int n_layer = 0;
  int n_embd = 0;
  int64_t vocab = 0;
  bool head_copy = false;

  bool chunked() const { return wte_chunks > 1; }
  int embedding_layers() const { return chunked() ? wte_chunks + 1 : 1; }
  int wte_layer(int chunk) const { return chunk; }
  int wpe_layer() const { return chunked() ? wte_chunks : 0; }
  // Vocabulary rows of chunk k: [chunk_begin(k), chunk_begin(k) + chunk_rows(k)).
  int64_t chunk_begin(int k) const { return int64_t{k} * chunk_rows_; }
  int64_t chunk_rows(int k) const {
    const int64_t begin = chunk_begin(k);
    return begin + chunk_rows_ <= vocab ? chunk_rows_ : vocab - begin;
  }
  int64_t rows_per_chunk() const { return chunk_rows_; }
  int block_layer(int block, BlockPart part) const {
    return embedding_layers() + kBlockParts * block + part;
  }
  int first_layer_of_block(int block) const { return block_layer(block, kAttentionIn); }
  int lnf_layer() const { return embedding_layers() + kBlockParts * n_layer; }
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
      tied.push_back({wte_layer(k), head_layer(k), chunk_rows(k) * n_embd});
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
inline int zero3_wte_chunks(const GPTConfig& config) {
  const int64_t C = config.n_embd;
  const int64_t layer = 4 * C * C + 4 * C;
  const int64_t chunks = (int64_t{config.vocab_size} * C + layer - 1) / layer;
  return chunks > 4 ? static_cast<int>(chunks) : 1;
}

}  // namespace tessera::models
