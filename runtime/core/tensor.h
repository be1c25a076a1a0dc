// Tensor: a cheap, contiguous view (storage, element offset, shape, dtype). It never owns
// more than a reference to its storage, so parameters and activations are views into a few
// flat buffers and a ZeRO shard is just an offset range.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "runtime/core/dtype.h"
#include "runtime/core/error.h"
#include "runtime/core/storage.h"

namespace tessera {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  Tensor(StoragePtr storage, int64_t offset, Shape shape, DType dtype);

  // A fresh tensor with its own storage.
  static Tensor empty(Shape shape, DType dtype, MemCategory category,
                      Device device = Device::cpu());

  template <typename T>
  T* data() const {
    TS_CHECK(dtype_ == dtype_of<T>(), "tensor holds {} but was read as {}", dtype_name(dtype_),
             dtype_name(dtype_of<T>()));
    return reinterpret_cast<T*>(raw());
  }
  void* raw() const;

  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return numel_; }
  int64_t offset() const { return offset_; }
  DType dtype() const { return dtype_; }
  size_t nbytes() const { return numel_ * dtype_size(dtype_); }
  Device device() const;
  bool defined() const { return storage_ != nullptr; }
  const StoragePtr& storage() const { return storage_; }

  // A view of `count` elements starting `start` elements into this one, with a new shape.
  Tensor slice(int64_t start, Shape shape) const;
  Tensor reshape(Shape shape) const { return slice(0, std::move(shape)); }

 private:
  StoragePtr storage_;
  int64_t offset_ = 0;
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::F32;
};

}  // namespace tessera
