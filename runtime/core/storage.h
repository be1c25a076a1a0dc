// Owned memory on one device, charged to a MemoryTracker under one category for its
// lifetime. Allocate once and reuse: a fresh page costs ~12 us to touch on these machines.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "runtime/core/device.h"
#include "runtime/core/memory_stats.h"

namespace tessera {

// Allocators for devices other than the CPU register themselves here (the CUDA backend
// does so at start-up), so core code never includes a device runtime.
struct DeviceAllocator {
  virtual ~DeviceAllocator() = default;
  virtual void* allocate(size_t bytes, int device_index) = 0;
  virtual void deallocate(void* ptr, int device_index) = 0;
  virtual void memset_zero(void* ptr, size_t bytes, int device_index) = 0;
};
void register_device_allocator(DeviceType type, DeviceAllocator* allocator);

class Storage {
 public:
  Storage() = default;
  // zero: fill with zero bytes (on the CPU this also faults every page in now, not mid-step).
  Storage(size_t bytes, MemCategory category, Device device = Device::cpu(), bool zero = true);
  ~Storage();
  Storage(Storage&& other) noexcept;
  Storage& operator=(Storage&& other) noexcept;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  MemCategory category() const { return category_; }
  void zero();

 private:
  void release();

  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_{};
  MemCategory category_ = MemCategory::Other;
  MemoryTracker* tracker_ = nullptr;
};

using StoragePtr = std::shared_ptr<Storage>;

}  // namespace tessera
