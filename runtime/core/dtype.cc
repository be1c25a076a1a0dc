#include "runtime/core/dtype.h"

#include "runtime/core/error.h"

namespace tessera {

DType parse_dtype(std::string_view name) {
  if (name == "f32" || name == "fp32" || name == "float32" || name == "float") return DType::F32;
  if (name == "f16" || name == "fp16" || name == "float16" || name == "half") return DType::F16;
  if (name == "bf16" || name == "bfloat16") return DType::BF16;
  if (name == "i32" || name == "int32") return DType::I32;
  if (name == "u16" || name == "uint16") return DType::U16;
  if (name == "f64" || name == "fp64" || name == "float64" || name == "double") return DType::F64;
  TS_THROW(InvalidArgument, "unknown dtype '{}': use one of f32, f16, bf16, i32, u16, f64", name);
}

}  // namespace tessera
