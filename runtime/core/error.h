// Error types and the TS_CHECK family: every failure in tessera is an exception that names
// the problem and, where the user can act, the fix. C status codes become these at the
// boundary (see kernels/cuda, parallel/comm).
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace tessera {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// The user gave us something we cannot use (file, config value, shape).
class InvalidArgument : public Error {
 public:
  using Error::Error;
};
// A communicator failed, timed out, or a peer rank died.
class CommError : public Error {
 public:
  using Error::Error;
};
// A CUDA runtime, cuBLAS or NCCL call failed.
class CudaError : public Error {
 public:
  using Error::Error;
};
// A file transfer failed (disk full, EIO, a swap file gone).
class IoError : public Error {
 public:
  using Error::Error;
};
// The feature exists but this binary was built without it.
class NotCompiled : public Error {
 public:
  using Error::Error;
};

namespace detail {
std::string where(const char* file, int line);
}  // namespace detail

}  // namespace tessera

// TS_THROW(InvalidArgument, "bad value {} (expected {})", a, b)
#define TS_THROW(type, ...) \
  throw ::tessera::type(fmt::format(__VA_ARGS__) + ::tessera::detail::where(__FILE__, __LINE__))

// TS_CHECK(cond, "what went wrong and how to fix it", args...): InvalidArgument on failure.
#define TS_CHECK(cond, ...)                  \
  do {                                       \
    if (!(cond)) {                           \
      TS_THROW(InvalidArgument, __VA_ARGS__); \
    }                                        \
  } while (0)

// Internal invariant: both values are printed. Failing it is a tessera bug, not a user error.
#define TS_CHECK_EQ(a, b, what)                                                          \
  do {                                                                                   \
    const auto& ts_a_ = (a);                                                             \
    const auto& ts_b_ = (b);                                                             \
    if (!(ts_a_ == ts_b_)) {                                                             \
      TS_THROW(Error, "{}: {} = {} but {} = {}", what, #a, ts_a_, #b, ts_b_);            \
    }                                                                                    \
  } while (0)
