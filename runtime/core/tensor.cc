#include "runtime/core/tensor.h"

#include <fmt/format.h>

namespace tessera {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    TS_CHECK(d >= 0, "negative dimension in shape {}", shape_str(shape));
    n *= d;
  }
  return n;
}

std::string shape_str(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

Tensor::Tensor(StoragePtr storage, int64_t offset, Shape shape, DType dtype)
    : storage_(std::move(storage)),
      offset_(offset),
      shape_(std::move(shape)),
      numel_(shape_numel(shape_)),
      dtype_(dtype) {
  const size_t end = (offset_ + numel_) * dtype_size(dtype_);
  TS_CHECK(storage_ != nullptr && offset_ >= 0 && end <= storage_->bytes(),
           "view of {} {} at offset {} exceeds its storage of {} bytes", dtype_name(dtype_),
           shape_str(shape_), offset_, storage_ ? storage_->bytes() : 0);
}

Tensor Tensor::empty(Shape shape, DType dtype, MemCategory category, Device device) {
  const int64_t n = shape_numel(shape);
  auto storage = std::make_shared<Storage>(n * dtype_size(dtype), category, device);
  return Tensor(std::move(storage), 0, std::move(shape), dtype);
}

void* Tensor::raw() const {
  if (storage_ == nullptr) return nullptr;
  return static_cast<char*>(storage_->data()) + offset_ * dtype_size(dtype_);
}

Device Tensor::device() const { return storage_ ? storage_->device() : Device::cpu(); }

Tensor Tensor::slice(int64_t start, Shape shape) const {
  const int64_t n = shape_numel(shape);
  TS_CHECK(start >= 0 && start + n <= numel_, "slice [{}, {}) is outside a tensor of {} elements",
           start, start + n, numel_);
  return Tensor(storage_, offset_ + start, std::move(shape), dtype_);
}

}  // namespace tessera
