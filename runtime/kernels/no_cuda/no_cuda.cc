// Built instead of kernels/cuda/ when TESSERA_WITH_CUDA is OFF: the CUDA API exists, so
// callers carry no #ifdef, but reports no device and throws NotCompiled if used anyway.
#include "runtime/core/copy_engine.h"
#include "runtime/core/error.h"
#include "runtime/kernels/cuda_kernels.h"

namespace tessera::kernels::cuda {
namespace {
[[noreturn]] void not_compiled(const char* function) {
  TS_THROW(NotCompiled,
           "cuda::{}: tessera was built without CUDA; rebuild with "
           "-DTESSERA_WITH_CUDA=ON",
           function);
}
}  // namespace

int device_count() { return 0; }
void set_device(int) { not_compiled("set_device"); }
int current_device() { not_compiled("current_device"); }
Stream create_stream() { not_compiled("create_stream"); }
void destroy_stream(Stream) { not_compiled("destroy_stream"); }
void synchronize(Stream) { not_compiled("synchronize"); }
void copy_to_device(void*, const void*, size_t, Stream) { not_compiled("copy_to_device"); }
void copy_to_host(void*, const void*, size_t, Stream) { not_compiled("copy_to_host"); }
void zero_async(void*, size_t, Stream) { not_compiled("zero_async"); }
std::unique_ptr<CopyEngine> make_copy_engine(int, Stream) { not_compiled("make_copy_engine"); }
void copy_on_device_async(void*, const void*, size_t, Stream) {
  not_compiled("copy_on_device_async");
}

void gemm(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
          int64_t, float, float*, int64_t, Stream) {
  not_compiled("gemm");
}
void matmul_forward(float*, const float*, const float*, const float*, int64_t, int64_t, int64_t,
                    Stream) {
  not_compiled("matmul_forward");
}
void matmul_backward(float*, float*, float*, const float*, const float*, const float*, int64_t,
                     int64_t, int64_t, Stream) {
  not_compiled("matmul_backward");
}
void layernorm_forward(float*, float*, float*, const float*, const float*, const float*, int64_t,
                       int64_t, Stream) {
  not_compiled("layernorm_forward");
}
void layernorm_backward(float*, float*, float*, const float*, const float*, const float*,
                        const float*, const float*, int64_t, int64_t, Stream) {
  not_compiled("layernorm_backward");
}
void gelu_forward(float*, const float*, int64_t, Stream) { not_compiled("gelu_forward"); }
void gelu_backward(float*, const float*, const float*, int64_t, Stream) {
  not_compiled("gelu_backward");
}
void residual_forward(float*, const float*, const float*, int64_t, Stream) {
  not_compiled("residual_forward");
}
void residual_backward(float*, float*, const float*, int64_t, Stream) {
  not_compiled("residual_backward");
}
void bias_add(float*, const float*, int64_t, int64_t, Stream) { not_compiled("bias_add"); }
void attention_forward(float*, float*, const float*, int, int, int, int, Stream) {
  not_compiled("attention_forward");
}
void attention_backward(float*, const float*, const float*, const float*, const float*, int, int,
                        int, int, Stream) {
  not_compiled("attention_backward");
}
void embedding_forward(float*, const int32_t*, const float*, const float*, int, int, int, Stream) {
  not_compiled("embedding_forward");
}
void embedding_backward(float*, float*, const float*, const int32_t*, int, int, int, Stream) {
  not_compiled("embedding_backward");
}
double lm_head_cross_entropy(float*, float*, float*, const float*, const float*, const int32_t*,
                             int64_t, int64_t, int64_t, float, float*, Stream) {
  not_compiled("lm_head_cross_entropy");
}
void position_embedding_forward(float*, const float*, int, int, int, Stream) {
  not_compiled("position_embedding_forward");
}
void token_embedding_rows_forward(float*, const int32_t*, const float*, int64_t, int64_t, int64_t,
                                  int, Stream) {
  not_compiled("token_embedding_rows_forward");
}
void position_embedding_backward(float*, const float*, int, int, int, Stream) {
  not_compiled("position_embedding_backward");
}
void token_embedding_rows_backward(float*, const float*, const int32_t*, int64_t, int64_t, int64_t,
                                   int, Stream) {
  not_compiled("token_embedding_rows_backward");
}
void cross_entropy_fold(float*, float*, float*, const float*, const int32_t*, int64_t, int64_t,
                        int64_t, Stream) {
  not_compiled("cross_entropy_fold");
}
double cross_entropy_finish(float*, float*, const float*, const float*, int64_t, Stream) {
  not_compiled("cross_entropy_finish");
}
void cross_entropy_chunk_backward(float*, const float*, const int32_t*, int64_t, int64_t, int64_t,
                                  float, Stream) {
  not_compiled("cross_entropy_chunk_backward");
}
void cross_entropy_mask_empty(float*, const float*, int64_t, Stream) {
  not_compiled("cross_entropy_mask_empty");
}
void cross_entropy_rescale(float*, float*, const float*, int64_t, Stream) {
  not_compiled("cross_entropy_rescale");
}
double sum_squares(const float*, int64_t, Stream) { not_compiled("sum_squares"); }
void scale(float*, float, int64_t, Stream) { not_compiled("scale"); }
void adamw_update(float*, const float*, float*, float*, int64_t, const AdamWParams&, Stream) {
  not_compiled("adamw_update");
}

void gemm16(DType, bool, bool, int64_t, int64_t, int64_t, float, const uint16_t*, int64_t,
            const uint16_t*, int64_t, float, float*, int64_t, Stream) {
  not_compiled("gemm16");
}
void matmul_forward16(DType, float*, const uint16_t*, const uint16_t*, const float*, int64_t,
                      int64_t, int64_t, Stream) {
  not_compiled("matmul_forward16");
}
void matmul_backward16(DType, float*, float*, float*, const uint16_t*, const float*,
                       const uint16_t*, const uint16_t*, int64_t, int64_t, int64_t, Stream) {
  not_compiled("matmul_backward16");
}
double lm_head_cross_entropy16(DType, float*, float*, float*, const uint16_t*, const uint16_t*,
                               const int32_t*, int64_t, int64_t, int64_t, float, float*, uint16_t*,
                               Stream) {
  not_compiled("lm_head_cross_entropy16");
}
void embedding_forward16(DType, float*, const int32_t*, const uint16_t*, const uint16_t*, int, int,
                         int, Stream) {
  not_compiled("embedding_forward16");
}
void position_embedding_forward16(DType, float*, const uint16_t*, int, int, int, Stream) {
  not_compiled("position_embedding_forward16");
}
void token_embedding_rows_forward16(DType, float*, const int32_t*, const uint16_t*, int64_t,
                                    int64_t, int64_t, int, Stream) {
  not_compiled("token_embedding_rows_forward16");
}
void to_16(DType, const float*, uint16_t*, int64_t, Stream) { not_compiled("to_16"); }
void from_16(DType, const uint16_t*, float*, int64_t, Stream) { not_compiled("from_16"); }
void accumulate_16(DType, uint16_t*, const float*, int64_t, Stream) {
  not_compiled("accumulate_16");
}
double sum_squares16(DType, const uint16_t*, int64_t, Stream) { not_compiled("sum_squares16"); }
void adamw_update16(DType, float*, uint16_t*, const uint16_t*, float*, float*, int64_t,
                    const AdamWParams&, Stream) {
  not_compiled("adamw_update16");
}

}  // namespace tessera::kernels::cuda
