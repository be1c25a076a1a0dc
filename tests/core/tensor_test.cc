// Tensor views and Storage ownership: views share storage and add offsets, bounds are
// checked with InvalidArgument, and moving a Storage transfers its accounting exactly once.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <utility>

#include "runtime/core/error.h"
#include "runtime/core/memory_stats.h"
#include "runtime/core/storage.h"
#include "runtime/core/tensor.h"

namespace tessera {
namespace {

TEST(ShapeTest, NumelAndStr) {
  EXPECT_EQ(shape_numel({}), 1);  // a scalar
  EXPECT_EQ(shape_numel({2, 3, 4}), 24);
  EXPECT_EQ(shape_numel({5, 0}), 0);
  EXPECT_EQ(shape_str({2, 3}), "[2, 3]");
  EXPECT_THROW(shape_numel({2, -1}), InvalidArgument);
}

TEST(TensorTest, EmptyIsZeroedAndSized) {
  MemoryTracker tracker;
  ScopedTracker scope(tracker);
  Tensor t = Tensor::empty({3, 5}, DType::F32, MemCategory::Activations);
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.numel(), 15);
  EXPECT_EQ(t.ndim(), 2);
  EXPECT_EQ(t.dim(0), 3);
  EXPECT_EQ(t.dim(-1), 5);
  EXPECT_EQ(t.nbytes(), 60u);
  EXPECT_EQ(t.offset(), 0);
  EXPECT_EQ(t.device(), Device::cpu());
  const float* p = t.data<float>();
  for (int i = 0; i < 15; ++i) EXPECT_EQ(p[i], 0.0f);
  EXPECT_EQ(tracker.snapshot().current_of(MemCategory::Activations), 60);
}

TEST(TensorTest, DefaultTensorIsUndefined) {
  Tensor t;
  EXPECT_FALSE(t.defined());
  EXPECT_EQ(t.raw(), nullptr);
  EXPECT_EQ(t.numel(), 0);
}

TEST(TensorTest, SliceAddsOffsetAndSharesStorage) {
  Tensor t = Tensor::empty({4, 6}, DType::F64, MemCategory::Other);
  double* base = t.data<double>();
  for (int i = 0; i < 24; ++i) base[i] = i;

  Tensor row2 = t.slice(12, {6});
  EXPECT_EQ(row2.offset(), 12);
  EXPECT_EQ(row2.storage(), t.storage());
  EXPECT_EQ(row2.data<double>(), base + 12);
  EXPECT_EQ(row2.data<double>()[0], 12.0);

  // A slice of a slice: offsets add up.
  Tensor tail = row2.slice(4, {2});
  EXPECT_EQ(tail.offset(), 16);
  EXPECT_EQ(tail.data<double>()[1], 17.0);

  // Writes through a view are visible through the parent.
  tail.data<double>()[0] = -1.0;
  EXPECT_EQ(base[16], -1.0);
}

TEST(TensorTest, ReshapeKeepsDataAndOffset) {
  Tensor t = Tensor::empty({2, 6}, DType::F32, MemCategory::Other);
  Tensor v = t.slice(6, {6}).reshape({2, 3});
  EXPECT_EQ(v.shape(), (Shape{2, 3}));
  EXPECT_EQ(v.offset(), 6);
  EXPECT_EQ(v.raw(), t.data<float>() + 6);
  EXPECT_THROW(v.reshape({7}), InvalidArgument);
}

TEST(TensorTest, SliceOutOfBoundsThrows) {
  Tensor t = Tensor::empty({10}, DType::F32, MemCategory::Other);
  EXPECT_NO_THROW(t.slice(0, {10}));
  EXPECT_NO_THROW(t.slice(10, {0}));  // empty view at the end
  EXPECT_THROW(t.slice(1, {10}), InvalidArgument);
  EXPECT_THROW(t.slice(8, {3}), InvalidArgument);
  EXPECT_THROW(t.slice(-1, {2}), InvalidArgument);
  // Bounds are those of the view, not of the storage behind it.
  Tensor head = t.slice(0, {4});
  EXPECT_THROW(head.slice(2, {3}), InvalidArgument);
}

TEST(TensorTest, ConstructorChecksStorageBounds) {
  auto storage = std::make_shared<Storage>(40, MemCategory::Other);  // 10 floats
  EXPECT_NO_THROW(Tensor(storage, 2, {8}, DType::F32));
  EXPECT_THROW(Tensor(storage, 3, {8}, DType::F32), InvalidArgument);
  EXPECT_THROW(Tensor(storage, 0, {6}, DType::F64), InvalidArgument);  // 48 bytes > 40
  EXPECT_THROW(Tensor(storage, -1, {2}, DType::F32), InvalidArgument);
  EXPECT_THROW(Tensor(nullptr, 0, {2}, DType::F32), InvalidArgument);
}

TEST(TensorTest, DataWithWrongTypeThrows) {
  Tensor t = Tensor::empty({4}, DType::F32, MemCategory::Other);
  EXPECT_THROW(t.data<double>(), InvalidArgument);
  EXPECT_THROW(t.data<int32_t>(), InvalidArgument);
  EXPECT_NO_THROW(t.data<float>());
}

TEST(StorageTest, ChargesTrackerForItsLifetime) {
  MemoryTracker tracker;
  ScopedTracker scope(tracker);
  {
    Storage s(1000, MemCategory::Grads);
    EXPECT_NE(s.data(), nullptr);
    EXPECT_EQ(s.bytes(), 1000u);
    EXPECT_EQ(s.category(), MemCategory::Grads);
    EXPECT_EQ(tracker.snapshot().current_of(MemCategory::Grads), 1000);
  }
  EXPECT_EQ(tracker.snapshot().current_of(MemCategory::Grads), 0);
  EXPECT_EQ(tracker.snapshot().peak_of(MemCategory::Grads), 1000);
}

TEST(StorageTest, ZeroFillsAndLargeBuffersAreAligned) {
  // Large enough to take the 2 MiB-aligned huge-page path.
  const size_t bytes = (size_t{2} << 20) + 12;
  Storage s(bytes, MemCategory::Other);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(s.data()) % (size_t{2} << 20), 0u);
  const auto* p = static_cast<const unsigned char*>(s.data());
  EXPECT_EQ(p[0], 0);
  EXPECT_EQ(p[bytes - 1], 0);
  std::memset(s.data(), 0xAB, bytes);
  s.zero();
  EXPECT_EQ(p[bytes / 2], 0);
  EXPECT_EQ(p[bytes - 1], 0);

  Storage small(24, MemCategory::Other);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small.data()) % 64, 0u);
}

TEST(StorageTest, ZeroBytesAllocatesNothing) {
  MemoryTracker tracker;
  ScopedTracker scope(tracker);
  Storage s(0, MemCategory::Params);
  EXPECT_EQ(s.data(), nullptr);
  EXPECT_EQ(tracker.snapshot().total_current, 0);
}

TEST(StorageTest, MoveConstructTransfersOwnershipOnce) {
  MemoryTracker tracker;
  ScopedTracker scope(tracker);
  Storage a(256, MemCategory::Params);
  void* p = a.data();
  Storage b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(b.bytes(), 256u);
  EXPECT_EQ(b.category(), MemCategory::Params);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_EQ(a.bytes(), 0u);
  EXPECT_EQ(tracker.snapshot().current_of(MemCategory::Params), 256);
}

TEST(StorageTest, MoveAssignReleasesTheOldBuffer) {
  MemoryTracker tracker;
  ScopedTracker scope(tracker);
  Storage a(100, MemCategory::Params);
  Storage b(30, MemCategory::Optimizer);
  EXPECT_EQ(tracker.snapshot().total_current, 130);
  b = std::move(a);
  MemorySnapshot s = tracker.snapshot();
  EXPECT_EQ(s.current_of(MemCategory::Optimizer), 0);
  EXPECT_EQ(s.current_of(MemCategory::Params), 100);
  EXPECT_EQ(s.total_current, 100);
  EXPECT_EQ(b.category(), MemCategory::Params);
  {
    Storage gone(std::move(b));
  }
  EXPECT_EQ(tracker.snapshot().total_current, 0);
  EXPECT_EQ(tracker.snapshot().total_peak, 130);
}

TEST(StorageTest, FreesToTheTrackerThatWasChargedEvenOutsideItsScope) {
  MemoryTracker tracker;
  std::unique_ptr<Storage> s;
  {
    ScopedTracker scope(tracker);
    s = std::make_unique<Storage>(64, MemCategory::Comm);
  }
  EXPECT_EQ(tracker.snapshot().current_of(MemCategory::Comm), 64);
  s.reset();
  EXPECT_EQ(tracker.snapshot().current_of(MemCategory::Comm), 0);
}

// core_tests links no device backend, so no CUDA allocator is ever registered here.
TEST(StorageTest, CudaWithoutBackendThrowsNotCompiledAndChargesNothing) {
  MemoryTracker tracker;
  ScopedTracker scope(tracker);
  EXPECT_THROW(Storage(16, MemCategory::Other, Device::cuda(0)), NotCompiled);
  EXPECT_EQ(tracker.snapshot().total_current, 0);
}

}  // namespace
}  // namespace tessera
