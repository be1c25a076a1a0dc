// The safetensors container format, at the byte level: a strict memory-mapped reader, a
// writer, and the f32 <-> f16 / bf16 conversions its float tensors need. It knows nothing
// of GPT; models/weights_io maps tessera's parameters onto it.
//
// Layout: 8-byte little-endian header length N, N bytes of JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {"key": "value"}}, then the data section; offsets are bytes relative to
// the start of the data section. Only F32, F16 and BF16 tensors are accepted: tessera has no
// use for integer or f64 tensors in a checkpoint, and refusing them early beats a confusing
// shape error later.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "runtime/core/dtype.h"
#include "runtime/core/tensor.h"

namespace tessera::models {

// One tensor of an opened file. `data` points into the file's mapping: valid while the
// SafetensorsFile lives, and not necessarily aligned (read elements with memcpy).
struct SafetensorsTensor {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  int64_t begin = 0;  // byte offsets within the data section
  int64_t end = 0;
  const std::byte* data = nullptr;
  int64_t numel() const { return shape_numel(shape); }
  int64_t nbytes() const { return end - begin; }
};

// A validated, read-only, memory-mapped safetensors file. The constructor checks the whole
// header (see safetensors.cc) and throws InvalidArgument naming the file, the tensor and the
// fix on the first problem, so callers may trust every SafetensorsTensor they are given.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // In data order (ascending offsets).
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  // nullptr when absent.
  const SafetensorsTensor* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  void parse_header(std::string_view header, int64_t data_size);

  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write: `fill` writes exactly numel(shape) * dtype_size(dtype) little-endian
// bytes to its argument. A callback rather than a pointer so the caller can transpose and
// convert one tensor at a time: saving never holds a second copy of the whole model.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  std::function<void(std::byte* out)> fill;
};

// Writes the entries in the given order (header keys and data alike), the header padded
// with spaces to a multiple of 8 bytes so every tensor's data starts 8-byte aligned when
// the tensors before it are. Writes to `path`.tmp and renames, so a crash never leaves a
// truncated file under the final name.
void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& entries,
                       const std::map<std::string, std::string>& metadata = {});

// "F32" / "F16" / "BF16", as the header spells them; throws for other dtypes.
std::string safetensors_dtype_name(DType dtype);

// Scalar conversions live in runtime/core/half.h (f32_to_f16, f16_to_f32, f32_to_bf16,
// bf16_to_f32: round to nearest, ties to even).

// Array conversions between f32 and a storage dtype (F32, F16 or BF16); `bytes` is
// little-endian and may be unaligned.
void encode_floats(const float* src, int64_t count, DType dtype, std::byte* bytes);
void decode_floats(const std::byte* bytes, int64_t count, DType dtype, float* dst);

}  // namespace tessera::models
