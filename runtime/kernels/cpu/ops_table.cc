// The CPU ops tables (runtime/kernels/ops.h): CpuOps<T> keeps everything in T (fp32, or f64 for
// gradient checks); CpuOps16 stores parameters, gradients and saved GEMM operands in bf16 or
// fp16 and computes in fp32.
#include "runtime/kernels/cpu/ops_table.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "runtime/core/error.h"
#include "runtime/core/storage.h"
#include "runtime/kernels/cpu_kernels.h"
#include "runtime/kernels/cpu_mixed.h"

namespace tessera::kernels::cpu {
namespace {

template <typename T>
class CpuOps final : public Ops<T> {
 public:
  Device device() const override { return Device::cpu(); }
  DType storage() const override { return dtype_of<T>(); }

  void zero(T* x, int64_t n) override { std::memset(x, 0, sizeof(T) * n); }
  void save(void* stored, const T* value, int64_t n) override {
    if (stored != value) std::memcpy(stored, value, sizeof(T) * n);
  }
  const T* view(const void* stored, T*, int64_t) override { return static_cast<const T*>(stored); }
  void accumulate(void* grads, const T* workspace, int64_t n) override {
    T* g = static_cast<T*>(grads);
    residual_forward(g, g, workspace, n);
  }
  void copy(T* dst, const T* src, int64_t n) override { std::memcpy(dst, src, sizeof(T) * n); }
  void to_host(T* host_dst, const T* src, int64_t n) override { copy(host_dst, src, n); }
  void from_host(T* dst, const T* host_src, int64_t n) override { copy(dst, host_src, n); }

  void linear_forward(T* out, const void* inp, const void* weight, const T* bias, int64_t N,
                      int64_t C, int64_t OC) override {
    matmul_forward(out, static_cast<const T*>(inp), static_cast<const T*>(weight), bias, N, C, OC);
  }
  void linear_backward(T* dinp, T* dweight, T* dbias, const T* dout, void*, const void* inp,
                       const void* weight, int64_t N, int64_t C, int64_t OC) override {
    matmul_backward(dinp, dweight, dbias, dout, static_cast<const T*>(inp),
                    static_cast<const T*>(weight), N, C, OC);
  }
  void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias,
                         int64_t N, int64_t C) override {
    cpu::layernorm_forward(out, mean, rstd, inp, weight, bias, N, C);
  }
  void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp,
                          const T* weight, const T* mean, const T* rstd, int64_t N,
                          int64_t C) override {
    cpu::layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
  }
  void gelu_forward(T* out, const T* inp, int64_t n) override { cpu::gelu_forward(out, inp, n); }
  void gelu_backward(T* dinp, const void* inp, const T* dout, int64_t n) override {
    cpu::gelu_backward(dinp, static_cast<const T*>(inp), dout, n);
  }
  void residual_forward(T* out, const T* a, const T* b, int64_t n) override {
    cpu::residual_forward(out, a, b, n);
  }
  void bias_add(T* out, const T* bias, int64_t N, int64_t C) override {
    cpu::bias_add(out, bias, N, C);
  }
  void attention_forward(T* out, T* lse, const T* qkv, int B, int T_, int C, int NH) override {
    cpu::attention_forward(out, lse, qkv, B, T_, C, NH);
  }
  void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse, int B,
                          int T_, int C, int NH) override {
    cpu::attention_backward(dqkv, dout, qkv, out, lse, B, T_, C, NH);
  }
  void embedding_forward(T* out, const int32_t* tokens, const void* wte, const void* wpe, int B,
                         int T_, int C) override {
    cpu::embedding_forward(out, tokens, static_cast<const T*>(wte), static_cast<const T*>(wpe), B,
                           T_, C);
  }
  void embedding_backward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B, int T_,
                          int C) override {
    cpu::embedding_backward(dwte, dwpe, dout, tokens, B, T_, C);
  }
  int64_t head_chunk_rows() const override { return kHeadChunkRows; }
  double lm_head_cross_entropy(T* dx, T* dwte, T* losses, const void* x, const void* wte,
                               const int32_t* targets, int64_t N, int64_t C, int64_t V,
                               double grad_scale, T* scratch, void*) override {
    return cpu::lm_head_cross_entropy<T>(dx, dwte, losses, static_cast<const T*>(x),
                                         static_cast<const T*>(wte), targets, N, C, V,
                                         static_cast<T>(grad_scale), scratch);
  }

  void position_embedding_forward(T* out, const void* wpe, int B, int T_, int C) override {
    cpu::position_embedding_forward(out, static_cast<const T*>(wpe), B, T_, C);
  }
  void token_embedding_rows_forward(T* out, const int32_t* tokens, const void* wte_rows,
                                    int64_t row_begin, int64_t rows, int64_t N, int C) override {
    cpu::token_embedding_rows_forward(out, tokens, static_cast<const T*>(wte_rows), row_begin, rows,
                                      N, C);
  }
  void position_embedding_backward(T* dwpe, const T* dout, int B, int T_, int C) override {
    cpu::position_embedding_backward(dwpe, dout, B, T_, C);
  }
  void token_embedding_rows_backward(T* dwte_rows, const T* dout, const int32_t* tokens,
                                     int64_t row_begin, int64_t rows, int64_t N, int C) override {
    cpu::token_embedding_rows_backward(dwte_rows, dout, tokens, row_begin, rows, N, C);
  }
  void cross_entropy_fold(T* max, T* sum, T* target_logit, const T* logits, const int32_t* targets,
                          int64_t N, int64_t Vc, int64_t v_begin) override {
    cpu::cross_entropy_fold(max, sum, target_logit, logits, targets, N, Vc, v_begin);
  }
  double cross_entropy_finish(T* max_to_lse, T* losses, const T* sum, const T* target_logit,
                              int64_t N) override {
    return cpu::cross_entropy_finish(max_to_lse, losses, sum, target_logit, N);
  }
  void cross_entropy_mask_empty(T* max, const T* sum, int64_t N) override {
    cpu::cross_entropy_mask_empty(max, sum, N);
  }
  void cross_entropy_rescale(T* max, T* sum, const T* global_max, int64_t N) override {
    cpu::cross_entropy_rescale(max, sum, global_max, N);
  }
  void cross_entropy_chunk_backward(T* logits, const T* lse, const int32_t* targets, int64_t N,
                                    int64_t Vc, int64_t v_begin, T grad_scale) override {
    cpu::cross_entropy_chunk_backward(logits, lse, targets, N, Vc, v_begin, grad_scale);
  }
};

class CpuOps16 final : public Ops<float> {
 public:
  explicit CpuOps16(DType dtype) : dtype_(dtype) {}
  Device device() const override { return Device::cpu(); }
  DType storage() const override { return dtype_; }

  void zero(float* x, int64_t n) override { std::memset(x, 0, sizeof(float) * n); }
  void save(void* stored, const float* value, int64_t n) override {
    to_16(dtype_, value, static_cast<uint16_t*>(stored), n);
  }
  const float* view(const void* stored, float* scratch, int64_t n) override {
    from_16(dtype_, static_cast<const uint16_t*>(stored), scratch, n);
    return scratch;
  }
  void accumulate(void* grads, const float* workspace, int64_t n) override {
    accumulate_16(dtype_, static_cast<uint16_t*>(grads), workspace, n);
  }
  void copy(float* dst, const float* src, int64_t n) override {
    std::memcpy(dst, src, sizeof(float) * n);
  }
  void to_host(float* host_dst, const float* src, int64_t n) override { copy(host_dst, src, n); }
  void from_host(float* dst, const float* host_src, int64_t n) override { copy(dst, host_src, n); }

  void linear_forward(float* out, const void* inp, const void* weight, const float* bias,
                      int64_t N, int64_t C, int64_t OC) override {
    matmul_forward16(dtype_, out, s16(inp), s16(weight), bias, N, C, OC);
  }
  void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, void* dout16,
                       const void* inp, const void* weight, int64_t N, int64_t C,
                       int64_t OC) override {
    auto* rounded = static_cast<uint16_t*>(dout16);
    to_16(dtype_, dout, rounded, N * OC);
    matmul_backward16(dtype_, dinp, dweight, dbias, rounded, dout, s16(inp), s16(weight), N, C, OC);
  }
  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                         const float* weight, const float* bias, int64_t N, int64_t C) override {
    cpu::layernorm_forward(out, mean, rstd, inp, weight, bias, N, C);
  }
  void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                          const float* inp, const float* weight, const float* mean,
                          const float* rstd, int64_t N, int64_t C) override {
    cpu::layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
  }
  void gelu_forward(float* out, const float* inp, int64_t n) override {
    cpu::gelu_forward(out, inp, n);
  }
  void gelu_backward(float* dinp, const void* inp, const float* dout, int64_t n) override {
    // Widen the saved pre-GELU activations a block at a time: no second fp32 copy of them.
    constexpr int64_t kBlock = int64_t{1} << 18;
    if (widened_.data() == nullptr) {
      widened_ = Storage(sizeof(float) * kBlock, MemCategory::Activations);
    }
    auto* widened = static_cast<float*>(widened_.data());
    for (int64_t at = 0; at < n; at += kBlock) {
      const int64_t len = std::min(kBlock, n - at);
      from_16(dtype_, s16(inp) + at, widened, len);
      cpu::gelu_backward(dinp + at, widened, dout + at, len);
    }
  }
  void residual_forward(float* out, const float* a, const float* b, int64_t n) override {
    cpu::residual_forward(out, a, b, n);
  }
  void bias_add(float* out, const float* bias, int64_t N, int64_t C) override {
    cpu::bias_add(out, bias, N, C);
  }
  void attention_forward(float* out, float* lse, const float* qkv, int B, int T_, int C,
                         int NH) override {
    cpu::attention_forward(out, lse, qkv, B, T_, C, NH);
  }
  void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                          const float* lse, int B, int T_, int C, int NH) override {
    cpu::attention_backward(dqkv, dout, qkv, out, lse, B, T_, C, NH);
  }
  void embedding_forward(float* out, const int32_t* tokens, const void* wte, const void* wpe,
                         int B, int T_, int C) override {
    embedding_forward16(dtype_, out, tokens, s16(wte), s16(wpe), B, T_, C);
  }
  void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                          int B, int T_, int C) override {
    cpu::embedding_backward(dwte, dwpe, dout, tokens, B, T_, C);
  }
  int64_t head_chunk_rows() const override { return kHeadChunkRows; }
  double lm_head_cross_entropy(float* dx, float* dwte, float* losses, const void* x,
                               const void* wte, const int32_t* targets, int64_t N, int64_t C,
                               int64_t V, double grad_scale, float* scratch,
                               void* scratch16) override {
    return lm_head_cross_entropy16(dtype_, dx, dwte, losses, s16(x), s16(wte), targets, N, C, V,
                                   static_cast<float>(grad_scale), scratch,
                                   static_cast<uint16_t*>(scratch16));
  }

  void position_embedding_forward(float* out, const void* wpe, int B, int T_, int C) override {
    position_embedding_forward16(dtype_, out, s16(wpe), B, T_, C);
  }
  void token_embedding_rows_forward(float* out, const int32_t* tokens, const void* wte_rows,
                                    int64_t row_begin, int64_t rows, int64_t N, int C) override {
    token_embedding_rows_forward16(dtype_, out, tokens, s16(wte_rows), row_begin, rows, N, C);
  }
  // The gradients and the cross-entropy are all in T: the fp32 kernels.
  void position_embedding_backward(float* dwpe, const float* dout, int B, int T_, int C) override {
    cpu::position_embedding_backward(dwpe, dout, B, T_, C);
  }
  void token_embedding_rows_backward(float* dwte_rows, const float* dout, const int32_t* tokens,
                                     int64_t row_begin, int64_t rows, int64_t N, int C) override {
    cpu::token_embedding_rows_backward(dwte_rows, dout, tokens, row_begin, rows, N, C);
  }
  void cross_entropy_fold(float* max, float* sum, float* target_logit, const float* logits,
                          const int32_t* targets, int64_t N, int64_t Vc, int64_t v_begin) override {
    cpu::cross_entropy_fold(max, sum, target_logit, logits, targets, N, Vc, v_begin);
  }
  double cross_entropy_finish(float* max_to_lse, float* losses, const float* sum,
                              const float* target_logit, int64_t N) override {
    return cpu::cross_entropy_finish(max_to_lse, losses, sum, target_logit, N);
  }
  void cross_entropy_mask_empty(float* max, const float* sum, int64_t N) override {
    cpu::cross_entropy_mask_empty(max, sum, N);
  }
  void cross_entropy_rescale(float* max, float* sum, const float* global_max,
                             int64_t N) override {
    cpu::cross_entropy_rescale(max, sum, global_max, N);
  }
  void cross_entropy_chunk_backward(float* logits, const float* lse, const int32_t* targets,
                                    int64_t N, int64_t Vc, int64_t v_begin,
                                    float grad_scale) override {
    cpu::cross_entropy_chunk_backward(logits, lse, targets, N, Vc, v_begin, grad_scale);
  }

 private:
  static const uint16_t* s16(const void* p) { return static_cast<const uint16_t*>(p); }
  DType dtype_;
  Storage widened_;  // gelu_backward's block of widened inputs (1 MiB, on first use)
};

}  // namespace

template <typename T>
std::unique_ptr<Ops<T>> make_cpu_ops(DType storage) {
  if (storage == dtype_of<T>()) return std::make_unique<CpuOps<T>>();
  if constexpr (std::is_same_v<T, float>) {
    if (storage == DType::BF16 || storage == DType::F16) return std::make_unique<CpuOps16>(storage);
  }
  TS_THROW(InvalidArgument, "no CPU ops table computes in {} with {} storage: use f32, bf16 or "
           "f16 with float, f64 with double", dtype_name(dtype_of<T>()), dtype_name(storage));
}

template std::unique_ptr<Ops<float>> make_cpu_ops<float>(DType);
template std::unique_ptr<Ops<double>> make_cpu_ops<double>(DType);

}  // namespace tessera::kernels::cpu
