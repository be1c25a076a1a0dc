#include "runtime/core/storage.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "runtime/core/error.h"

namespace tessera {
namespace {
constexpr size_t kHugePage = size_t{2} << 20;
DeviceAllocator* g_cuda_allocator = nullptr;

DeviceAllocator* allocator_for(Device d) {
  if (d.type == DeviceType::CUDA) {
    if (g_cuda_allocator == nullptr) {
      TS_THROW(NotCompiled, "CUDA memory requested but this tessera was built without CUDA; "
                            "rebuild with -DTESSERA_WITH_CUDA=ON");
    }
    return g_cuda_allocator;
  }
  return nullptr;
}
}  // namespace

void register_device_allocator(DeviceType type, DeviceAllocator* allocator) {
  if (type == DeviceType::CUDA) g_cuda_allocator = allocator;
}

Storage::Storage(size_t bytes, MemCategory category, Device device, bool zero)
    : bytes_(bytes), device_(device), category_(category), tracker_(&MemoryTracker::current()) {
  if (bytes == 0) return;
  if (DeviceAllocator* a = allocator_for(device)) {
    data_ = a->allocate(bytes, device.index);
  } else {
    // Large buffers are 2 MiB aligned and asked to use transparent huge pages (THP is
    // 'madvise' here): fewer page faults and TLB misses on the hot training buffers.
    const size_t align = bytes >= kHugePage ? kHugePage : 64;
    const size_t rounded = (bytes + align - 1) / align * align;
    data_ = std::aligned_alloc(align, rounded);
    if (data_ == nullptr) {
      TS_THROW(Error, "out of host memory allocating {} for {}", format_bytes(bytes),
               mem_category_name(category));
    }
    if (align == kHugePage) madvise(data_, rounded, MADV_HUGEPAGE);
  }
  tracker_->on_alloc(category_, static_cast<int64_t>(bytes_));
  if (zero) this->zero();
}

void Storage::zero() {
  if (data_ == nullptr) return;
  if (DeviceAllocator* a = allocator_for(device_)) {
    a->memset_zero(data_, bytes_, device_.index);
  } else {
    std::memset(data_, 0, bytes_);
  }
}

void Storage::release() {
  if (data_ == nullptr) return;
  if (DeviceAllocator* a = allocator_for(device_)) {
    a->deallocate(data_, device_.index);
  } else {
    std::free(data_);
  }
  tracker_->on_free(category_, static_cast<int64_t>(bytes_));
  data_ = nullptr;
}

Storage::~Storage() { release(); }

Storage::Storage(Storage&& other) noexcept { *this = std::move(other); }

Storage& Storage::operator=(Storage&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    device_ = other.device_;
    category_ = other.category_;
    tracker_ = other.tracker_;
  }
  return *this;
}

}  // namespace tessera
