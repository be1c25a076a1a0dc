// The CUDA ops table over kernels/cuda (cuda_kernels.h): the same graph as the CPU tables, with
// every buffer in device memory. Token ids arrive from the host and are copied to the device
// here, so the graph never knows which device it runs on. Built in every configuration: without
// CUDA the kernels it calls throw NotCompiled.
#include "runtime/kernels/cuda_ops_table.h"

#include <algorithm>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/core/storage.h"
#include "runtime/kernels/cuda_kernels.h"
#include "tessera/config.h"

namespace tessera::kernels::cuda {
namespace {

class CudaOps final : public Ops<float> {
 public:
  CudaOps(Device device, DType storage)
      : device_(device), storage_(storage), stream_(create_stream()) {}
  ~CudaOps() override { destroy_stream(stream_); }
  CudaOps(const CudaOps&) = delete;
  CudaOps& operator=(const CudaOps&) = delete;

  Device device() const override { return device_; }
  DType storage() const override { return storage_; }

  void zero(float* x, int64_t n) override { zero_async(x, sizeof(float) * n, stream_); }
  void save(void* stored, const float* value, int64_t n) override {
    if (wide()) {
      if (stored != value) copy_on_device_async(stored, value, sizeof(float) * n, stream_);
      return;
    }
    to_16(storage_, value, static_cast<uint16_t*>(stored), n, stream_);
  }
  const float* view(const void* stored, float* scratch, int64_t n) override {
    if (wide()) return static_cast<const float*>(stored);
    from_16(storage_, s16(stored), scratch, n, stream_);
    return scratch;
  }
  void accumulate(void* grads, const float* workspace, int64_t n) override {
    if (wide()) {
      auto* g = static_cast<float*>(grads);
      cuda::residual_forward(g, g, workspace, n, stream_);
      return;
    }
    accumulate_16(storage_, static_cast<uint16_t*>(grads), workspace, n, stream_);
  }
  void copy(float* dst, const float* src, int64_t n) override {
    copy_on_device_async(dst, src, sizeof(float) * n, stream_);
  }
  // Synchronous: the host side is read or reused right after.
  void to_host(float* host_dst, const float* src, int64_t n) override {
    copy_to_host(host_dst, src, sizeof(float) * n, stream_);
  }
  void from_host(float* dst, const float* host_src, int64_t n) override {
    copy_to_device(dst, host_src, sizeof(float) * n, stream_);
  }

  void linear_forward(float* out, const void* inp, const void* weight, const float* bias,
                      int64_t N, int64_t C, int64_t OC) override {
    if (wide()) {
      matmul_forward(out, f32(inp), f32(weight), bias, N, C, OC, stream_);
    } else {
      matmul_forward16(storage_, out, s16(inp), s16(weight), bias, N, C, OC, stream_);
    }
  }
  void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, void* dout16,
                       const void* inp, const void* weight, int64_t N, int64_t C,
                       int64_t OC) override {
    if (wide()) {
      matmul_backward(dinp, dweight, dbias, dout, f32(inp), f32(weight), N, C, OC, stream_);
      return;
    }
    auto* rounded = static_cast<uint16_t*>(dout16);
    to_16(storage_, dout, rounded, N * OC, stream_);
    matmul_backward16(storage_, dinp, dweight, dbias, rounded, dout, s16(inp), s16(weight), N, C,
                      OC, stream_);
  }
  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                         const float* weight, const float* bias, int64_t N, int64_t C) override {
    cuda::layernorm_forward(out, mean, rstd, inp, weight, bias, N, C, stream_);
  }
  void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                          const float* inp, const float* weight, const float* mean,
                          const float* rstd, int64_t N, int64_t C) override {
    cuda::layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C, stream_);
  }
  void gelu_forward(float* out, const float* inp, int64_t n) override {
    cuda::gelu_forward(out, inp, n, stream_);
  }
  void gelu_backward(float* dinp, const void* inp, const float* dout, int64_t n) override {
    if (wide()) {
      cuda::gelu_backward(dinp, f32(inp), dout, n, stream_);
      return;
    }
    constexpr int64_t kBlock = int64_t{1} << 20;
    if (widened_.data() == nullptr) {
      widened_ = Storage(sizeof(float) * kBlock, MemCategory::Activations, device_);
    }
    auto* widened = static_cast<float*>(widened_.data());
    for (int64_t at = 0; at < n; at += kBlock) {
      const int64_t len = std::min(kBlock, n - at);
      from_16(storage_, s16(inp) + at, widened, len, stream_);
      cuda::gelu_backward(dinp + at, widened, dout + at, len, stream_);
    }
  }
  void residual_forward(float* out, const float* a, const float* b, int64_t n) override {
    cuda::residual_forward(out, a, b, n, stream_);
  }
  void bias_add(float* out, const float* bias, int64_t N, int64_t C) override {
    cuda::bias_add(out, bias, N, C, stream_);
  }
  void attention_forward(float* out, float* lse, const float* qkv, int B, int T_, int C,
                         int NH) override {
    cuda::attention_forward(out, lse, qkv, B, T_, C, NH, stream_);
  }
  void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                          const float* lse, int B, int T_, int C, int NH) override {
    cuda::attention_backward(dqkv, dout, qkv, out, lse, B, T_, C, NH, stream_);
  }
  void embedding_forward(float* out, const int32_t* tokens, const void* wte, const void* wpe,
                         int B, int T_, int C) override {
    const int32_t* ids = upload(tokens, int64_t{B} * T_);
    if (wide()) {
      cuda::embedding_forward(out, ids, f32(wte), f32(wpe), B, T_, C, stream_);
    } else {
      embedding_forward16(storage_, out, ids, s16(wte), s16(wpe), B, T_, C, stream_);
    }
  }
  void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                          int B, int T_, int C) override {
    cuda::embedding_backward(dwte, dwpe, dout, upload(tokens, int64_t{B} * T_), B, T_, C, stream_);
  }
  int64_t head_chunk_rows() const override { return kHeadChunkRows; }
  double lm_head_cross_entropy(float* dx, float* dwte, float* losses, const void* x,
                               const void* wte, const int32_t* targets, int64_t N, int64_t C,
                               int64_t V, double grad_scale, float* scratch,
                               void* scratch16) override {
    const int32_t* ids = upload(targets, N);
    const auto scale = static_cast<float>(grad_scale);
    if (wide()) {
      return cuda::lm_head_cross_entropy(dx, dwte, losses, f32(x), f32(wte), ids, N, C, V, scale,
                                         scratch, stream_);
    }
    return lm_head_cross_entropy16(storage_, dx, dwte, losses, s16(x), s16(wte), ids, N, C, V,
                                   scale, scratch, static_cast<uint16_t*>(scratch16), stream_);
  }

  void position_embedding_forward(float* out, const void* wpe, int B, int T_, int C) override {
    if (wide()) {
      cuda::position_embedding_forward(out, f32(wpe), B, T_, C, stream_);
    } else {
      position_embedding_forward16(storage_, out, s16(wpe), B, T_, C, stream_);
    }
  }
  void token_embedding_rows_forward(float* out, const int32_t* tokens, const void* wte_rows,
                                    int64_t row_begin, int64_t rows, int64_t N, int C) override {
    const int32_t* ids = upload(tokens, N);
    if (wide()) {
      cuda::token_embedding_rows_forward(out, ids, f32(wte_rows), row_begin, rows, N, C, stream_);
    } else {
      token_embedding_rows_forward16(storage_, out, ids, s16(wte_rows), row_begin, rows, N, C,
                                     stream_);
    }
  }
  void position_embedding_backward(float* dwpe, const float* dout, int B, int T_, int C) override {
    cuda::position_embedding_backward(dwpe, dout, B, T_, C, stream_);
  }
  void token_embedding_rows_backward(float* dwte_rows, const float* dout, const int32_t* tokens,
                                     int64_t row_begin, int64_t rows, int64_t N, int C) override {
    cuda::token_embedding_rows_backward(dwte_rows, dout, upload(tokens, N), row_begin, rows, N, C,
                                        stream_);
  }
  void cross_entropy_fold(float* max, float* sum, float* target_logit, const float* logits,
                          const int32_t* targets, int64_t N, int64_t Vc, int64_t v_begin) override {
    cuda::cross_entropy_fold(max, sum, target_logit, logits, upload(targets, N), N, Vc, v_begin,
                             stream_);
  }
  double cross_entropy_finish(float* max_to_lse, float* losses, const float* sum,
                              const float* target_logit, int64_t N) override {
    if (losses == nullptr) {
      // The loss sum is reduced from per-row losses on the device: keep them somewhere.
      const size_t bytes = sizeof(float) * static_cast<size_t>(std::max<int64_t>(N, 1));
      if (losses_.bytes() < bytes) losses_ = Storage(bytes, MemCategory::Activations, device_);
      losses = static_cast<float*>(losses_.data());
    }
    return cuda::cross_entropy_finish(max_to_lse, losses, sum, target_logit, N, stream_);
  }
  void cross_entropy_mask_empty(float* max, const float* sum, int64_t N) override {
    cuda::cross_entropy_mask_empty(max, sum, N, stream_);
  }
  void cross_entropy_rescale(float* max, float* sum, const float* global_max,
                             int64_t N) override {
    cuda::cross_entropy_rescale(max, sum, global_max, N, stream_);
  }
  void cross_entropy_chunk_backward(float* logits, const float* lse, const int32_t* targets,
                                    int64_t N, int64_t Vc, int64_t v_begin,
                                    float grad_scale) override {
    cuda::cross_entropy_chunk_backward(logits, lse, upload(targets, N), N, Vc, v_begin, grad_scale,
                                       stream_);
  }

 private:
  bool wide() const { return storage_ == DType::F32; }
  static const uint16_t* s16(const void* p) { return static_cast<const uint16_t*>(p); }
  static const float* f32(const void* p) { return static_cast<const float*>(p); }
  // Host token ids copied into the table's device buffer (grown on demand). The chunked ops
  // pass the same ids once per vocabulary chunk: ids equal to those already on the device are
  // not copied again, which spares a copy and a wait for the stream per chunk.
  const int32_t* upload(const int32_t* host, int64_t n) {
    const auto count = static_cast<size_t>(n);
    const bool same =
        uploaded_.size() == count && std::equal(host, host + count, uploaded_.begin());
    if (!same) {
      uploaded_.clear();
      const size_t bytes = sizeof(int32_t) * count;
      if (tokens_.bytes() < bytes) tokens_ = Storage(bytes, MemCategory::Activations, device_);
      copy_to_device(tokens_.data(), host, bytes, stream_);
      uploaded_.assign(host, host + count);
    }
    return static_cast<const int32_t*>(tokens_.data());
  }

  Device device_;
  DType storage_;
  Stream stream_;
  Storage widened_;  // gelu_backward's block of widened inputs (16-bit storage)
  Storage tokens_;   // token ids on the device
  std::vector<int32_t> uploaded_;  // what tokens_ holds
  Storage losses_;  // cross_entropy_finish's per-row losses when the caller wants none
};

}  // namespace

std::unique_ptr<Ops<float>> make_cuda_ops(Device device, DType storage) {
  TS_CHECK(storage == DType::F32 || storage == DType::BF16 || storage == DType::F16,
           "no CUDA ops table for {} storage: use f32, bf16 or f16", dtype_name(storage));
  if (!TESSERA_WITH_CUDA) {
    TS_THROW(NotCompiled, "{}: tessera was built without CUDA; rebuild with -DTESSERA_WITH_CUDA=ON",
             device.str());
  }
  const int count = device_count();
  TS_CHECK(device.index >= 0 && device.index < count,
           "{} is not present: this machine has {} CUDA device(s)", device.str(), count);
  set_device(device.index);
  return std::make_unique<CudaOps>(device, storage);
}

}  // namespace tessera::kernels::cuda
