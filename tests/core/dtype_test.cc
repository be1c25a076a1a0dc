// DType names, sizes and parsing.
#include <gtest/gtest.h>

#include <string>

#include "runtime/core/dtype.h"
#include "runtime/core/error.h"

namespace tessera {
namespace {

TEST(DTypeTest, ParseAcceptsEveryAlias) {
  EXPECT_EQ(parse_dtype("f32"), DType::F32);
  EXPECT_EQ(parse_dtype("fp32"), DType::F32);
  EXPECT_EQ(parse_dtype("float32"), DType::F32);
  EXPECT_EQ(parse_dtype("float"), DType::F32);
  EXPECT_EQ(parse_dtype("f16"), DType::F16);
  EXPECT_EQ(parse_dtype("fp16"), DType::F16);
  EXPECT_EQ(parse_dtype("half"), DType::F16);
  EXPECT_EQ(parse_dtype("bf16"), DType::BF16);
  EXPECT_EQ(parse_dtype("bfloat16"), DType::BF16);
  EXPECT_EQ(parse_dtype("i32"), DType::I32);
  EXPECT_EQ(parse_dtype("int32"), DType::I32);
  EXPECT_EQ(parse_dtype("u16"), DType::U16);
  EXPECT_EQ(parse_dtype("f64"), DType::F64);
  EXPECT_EQ(parse_dtype("double"), DType::F64);
}

TEST(DTypeTest, ParseRoundTripsNames) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::I32, DType::U16, DType::F64}) {
    EXPECT_EQ(parse_dtype(dtype_name(t)), t) << dtype_name(t);
  }
}

TEST(DTypeTest, ParseUnknownThrowsNamingTheChoices) {
  for (const char* bad : {"", "F32", "fp8", "float 32", "f32 "}) {
    try {
      parse_dtype(bad);
      ADD_FAILURE() << "'" << bad << "' was accepted";
    } catch (const InvalidArgument& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("bf16"), std::string::npos) << msg;
      EXPECT_NE(msg.find(std::string("'") + bad + "'"), std::string::npos) << msg;
    }
  }
}

TEST(DTypeTest, SizesAndCompileTimeMapping) {
  static_assert(dtype_size(DType::F32) == 4 && dtype_size(DType::F64) == 8);
  static_assert(dtype_of<float>() == DType::F32 && dtype_of<double>() == DType::F64);
  EXPECT_EQ(dtype_size(DType::F16), 2u);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::I32), 4u);
  EXPECT_EQ(dtype_size(DType::U16), 2u);
  EXPECT_EQ(dtype_of<int32_t>(), DType::I32);
  EXPECT_EQ(dtype_of<uint16_t>(), DType::U16);
}

}  // namespace
}  // namespace tessera
