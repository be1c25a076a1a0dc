// The ops table: every kernel the model graph calls, chosen at run time by device and
// precision. The graph (models/) is written once against it; what differs between fp32 and
// bf16 / fp16, and between the CPU and CUDA, lives here and in the buffers.
//
// T is the compute type: float (fp32, bf16, fp16 tables) or double (gradient checks).
// `storage()` is the dtype of parameters, gradients and the GEMM operands kept for backward:
// T itself, or a 16-bit type for the mixed tables. A "stored" pointer (void*) holds
// storage() elements; every other pointer holds T. LayerNorm, GELU, attention's softmax, the
// residual stream and all accumulation stay in T.
//
// On a 16-bit table a GEMM takes 16-bit operands and accumulates in fp32, a block's
// gradients are formed in a T workspace and added into the 16-bit gradients once per
// micro-batch (stages_gradients()), and small parameters are widened to T before use.
#pragma once

#include <cstdint>
#include <memory>

#include "runtime/core/device.h"
#include "runtime/core/dtype.h"

namespace tessera::kernels {

template <typename T>
class Ops {
 public:
  virtual ~Ops() = default;

  virtual Device device() const = 0;
  virtual DType storage() const = 0;
  size_t storage_size() const { return dtype_size(storage()); }
  // Stored buffers are T itself: saving is a no-op and gradients go straight to their slot.
  bool same_storage() const { return storage() == dtype_of<T>(); }
  // Gradients are formed in a T workspace and added into the stored gradients afterwards.
  bool stages_gradients() const { return !same_storage(); }
  // `stored` advanced by n elements of storage().
  void* at(void* stored, int64_t n) const {
    return static_cast<char*>(stored) + n * static_cast<int64_t>(storage_size());
  }
  const void* at(const void* stored, int64_t n) const {
    return static_cast<const char*>(stored) + n * static_cast<int64_t>(storage_size());
  }

  // --- Moving between T and storage.
  virtual void zero(T* x, int64_t n) = 0;
  // Where a result that will be kept in `stored` is computed: `stored` itself when the
  // storage is T, else `scratch` (n elements of T), to be narrowed by save().
  T* target(void* stored, T* scratch) const {
    return same_storage() ? static_cast<T*>(stored) : scratch;
  }
  // Keeps `value` (n elements, the pointer target() gave) in `stored`: rounds on 16-bit tables.
  virtual void save(void* stored, const T* value, int64_t n) = 0;
  // A T view of a stored buffer: the buffer itself, or widened into `scratch`.
  virtual const T* view(const void* stored, T* scratch, int64_t n) = 0;
  // grads (stored) += workspace (T), for tables that stage gradients.
  virtual void accumulate(void* grads, const T* workspace, int64_t n) = 0;
  // n elements of T: within the device, and between the device and host memory (activation
  // checkpoints kept on the host; plain copies on the CPU).
  virtual void copy(T* dst, const T* src, int64_t n) = 0;
  virtual void to_host(T* host_dst, const T* src, int64_t n) = 0;
  virtual void from_host(T* dst, const T* host_src, int64_t n) = 0;

  // --- The model's kernels (forward and backward; see cpu_kernels.h for each contract).
  // Backward kernels ACCUMULATE into their parameter-gradient outputs.
  virtual void linear_forward(T* out, const void* inp, const void* weight, const T* bias,
                              int64_t N, int64_t C, int64_t OC) = 0;
  // dout16: room for N x OC stored elements, where 16-bit tables round dout for the GEMMs.
  virtual void linear_backward(T* dinp, T* dweight, T* dbias, const T* dout, void* dout16,
                               const void* inp, const void* weight, int64_t N, int64_t C,
                               int64_t OC) = 0;
  virtual void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight,
                                 const T* bias, int64_t N, int64_t C) = 0;
  virtual void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp,
                                  const T* weight, const T* mean, const T* rstd, int64_t N,
                                  int64_t C) = 0;
  virtual void gelu_forward(T* out, const T* inp, int64_t n) = 0;
  // dinp += GELU'(inp) * dout, inp as stored.
  virtual void gelu_backward(T* dinp, const void* inp, const T* dout, int64_t n) = 0;
  virtual void residual_forward(T* out, const T* a, const T* b, int64_t n) = 0;
  // out [N, C] += bias [C] on every row.
  virtual void bias_add(T* out, const T* bias, int64_t N, int64_t C) = 0;
  virtual void attention_forward(T* out, T* lse, const T* qkv, int B, int T_, int C, int NH) = 0;
  virtual void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out,
                                  const T* lse, int B, int T_, int C, int NH) = 0;
  virtual void embedding_forward(T* out, const int32_t* tokens, const void* wte, const void* wpe,
                                 int B, int T_, int C) = 0;
  virtual void embedding_backward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B,
                                  int T_, int C) = 0;
  // Rows of the head processed at once: the logits scratch holds head_chunk_rows() x V.
  virtual int64_t head_chunk_rows() const = 0;
  // The fused head: summed cross-entropy; with dx, dx and dwte get the gradients.
  // scratch: head_chunk_rows() x V of T; scratch16: as many stored elements (16-bit tables).
  virtual double lm_head_cross_entropy(T* dx, T* dwte, T* losses, const void* x, const void* wte,
                                       const int32_t* targets, int64_t N, int64_t C, int64_t V,
                                       double grad_scale, T* scratch, void* scratch16) = 0;

  // --- The word embedding in row chunks: wte [V, C] (tied to the head) split by vocabulary
  // rows, so it can be gathered (ZeRO-3) or owned (vocabulary parallelism) a chunk at a time.
  // Together they are embedding_forward / embedding_backward bit for bit, and
  // lm_head_cross_entropy within rounding (with the head's GEMMs done per chunk by
  // linear_forward / linear_backward). tokens and targets are host pointers.

  // out[b, t] = wpe[t]: the position embedding alone (wpe stored, [T_, C]).
  virtual void position_embedding_forward(T* out, const void* wpe, int B, int T_, int C) = 0;
  // out[i] += wte_rows[tokens[i] - row_begin] for the i < N whose token is in
  // [row_begin, row_begin + rows); other rows of out are untouched. wte_rows stored, [rows, C].
  virtual void token_embedding_rows_forward(T* out, const int32_t* tokens, const void* wte_rows,
                                            int64_t row_begin, int64_t rows, int64_t N, int C) = 0;
  // dwpe[t] += sum over b of dout[b, t].
  virtual void position_embedding_backward(T* dwpe, const T* dout, int B, int T_, int C) = 0;
  // dwte_rows[tokens[i] - row_begin] += dout[i] for the i whose token is in range.
  virtual void token_embedding_rows_backward(T* dwte_rows, const T* dout, const int32_t* tokens,
                                             int64_t row_begin, int64_t rows, int64_t N, int C) = 0;
  // Softmax cross-entropy over a vocabulary in chunks. logits [N, Vc] hold vocabulary columns
  // [v_begin, v_begin + Vc). Folds them into running per-row statistics: max[N] (read only
  // where sum > 0), sum[N] of exp(logit - max) (start at 0, rescaled when max grows), and
  // target_logit[N], written when targets[n] falls in the chunk.
  virtual void cross_entropy_fold(T* max, T* sum, T* target_logit, const T* logits,
                                  const int32_t* targets, int64_t N, int64_t Vc,
                                  int64_t v_begin) = 0;
  // After the last chunk: lse[n] = max[n] + log(sum[n]) written in place over max, losses[n] =
  // lse[n] - target_logit[n] (losses may be null); returns the sum of the losses in double.
  virtual double cross_entropy_finish(T* max_to_lse, T* losses, const T* sum, const T* target_logit,
                                      int64_t N) = 0;
  // Vocabulary parallelism, between the folds and the finish (cpu_kernels.h): a row nothing
  // was folded into gets the lowest max; then sum is made relative to global_max (the
  // all-reduced max), which max takes.
  virtual void cross_entropy_mask_empty(T* max, const T* sum, int64_t N) = 0;
  virtual void cross_entropy_rescale(T* max, T* sum, const T* global_max, int64_t N) = 0;
  // The chunk's logits [N, Vc] become their gradient in place:
  // (exp(logit - lse[n]) - [v_begin + j == targets[n]]) * grad_scale.
  virtual void cross_entropy_chunk_backward(T* logits, const T* lse, const int32_t* targets,
                                            int64_t N, int64_t Vc, int64_t v_begin,
                                            T grad_scale) = 0;
};

// The table for `storage` on `device`: T = float with f32, bf16 or f16; T = double with f64.
// Throws NotCompiled for CUDA in a build without it, InvalidArgument for other pairs.
template <typename T>
std::unique_ptr<Ops<T>> make_ops(Device device, DType storage);

}  // namespace tessera::kernels
