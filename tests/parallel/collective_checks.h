// Reference implementations and per-rank checks of every collective, shared by the thread
// tests (parallel_tests) and the MPI tests (parallel_mpi_tests) so both backends are held to
// the same answers. Inputs are deterministic per (rank, element), so every rank can compute
// every peer's input and the expected result without communicating.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/core/half.h"
#include "parallel/comm/process_group.h"

namespace tessera::parallel::testing {

using Bytes = std::vector<std::byte>;

inline float load_element(const Bytes& data, size_t i, DType dtype) {
  if (dtype == DType::F32) {
    float f;
    std::memcpy(&f, data.data() + i * 4, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, data.data() + i * 2, 2);
  return dtype == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

inline void store_element(Bytes& data, size_t i, DType dtype, float value) {
  if (dtype == DType::F32) {
    std::memcpy(data.data() + i * 4, &value, 4);
    return;
  }
  const uint16_t h = dtype == DType::F16 ? f32_to_f16(value) : f32_to_bf16(value);
  std::memcpy(data.data() + i * 2, &h, 2);
}

// Values in [-16, 16) with 6 fractional bits: sums round differently in f16/bf16 than in f32,
// so a backend that accumulates in 16 bits fails these checks.
inline Bytes make_input(int rank, size_t count, DType dtype, uint32_t salt = 0) {
  Bytes data(count * dtype_size(dtype));
  for (size_t i = 0; i < count; ++i) {
    uint32_t h =
        static_cast<uint32_t>(i) * 2654435761u ^ (static_cast<uint32_t>(rank) + salt) * 40503u;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    store_element(data, i, dtype, static_cast<float>(static_cast<int>(h % 2048) - 1024) / 64.0f);
  }
  return data;
}

// The reduction of elements [offset, offset + n) over ranks 0..N-1 in rank order, in f32,
// rounded once: what every backend must produce bit for bit.
inline Bytes reference_reduce(const std::vector<Bytes>& inputs, size_t offset, size_t n,
                              DType dtype, ReduceOp op) {
  Bytes out(n * dtype_size(dtype));
  for (size_t i = 0; i < n; ++i) {
    float acc = load_element(inputs[0], offset + i, dtype);
    for (size_t j = 1; j < inputs.size(); ++j) {
      const float x = load_element(inputs[j], offset + i, dtype);
      acc = op == ReduceOp::Max ? std::max(acc, x) : acc + x;
    }
    if (op == ReduceOp::Avg) acc /= static_cast<float>(inputs.size());
    store_element(out, i, dtype, acc);
  }
  return out;
}

inline Bytes slice(const Bytes& data, size_t offset, size_t n, DType dtype) {
  const size_t e = dtype_size(dtype);
  return Bytes(data.begin() + offset * e, data.begin() + (offset + n) * e);
}

// First mismatching element, for a readable failure instead of a byte dump.
inline ::testing::AssertionResult same_elements(const Bytes& actual, const Bytes& expected,
                                                DType dtype) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure() << "size " << actual.size() << " != " << expected.size();
  }
  const size_t n = actual.size() / dtype_size(dtype);
  for (size_t i = 0; i < n; ++i) {
    const size_t e = dtype_size(dtype);
    if (std::memcmp(actual.data() + i * e, expected.data() + i * e, e) != 0) {
      return ::testing::AssertionFailure()
             << "element " << i << " of " << n << ": got " << load_element(actual, i, dtype)
             << ", expected " << load_element(expected, i, dtype);
    }
  }
  return ::testing::AssertionSuccess();
}

// Uneven blocks summing to count, with the first block(s) short or empty.
inline std::vector<size_t> uneven_counts(size_t count, int n) {
  std::vector<size_t> counts(n);
  auto boundary = [&](size_t r) { return count * r * r / (static_cast<size_t>(n) * n); };
  for (int r = 0; r < n; ++r) counts[r] = boundary(r + 1) - boundary(r);
  return counts;
}

inline std::vector<size_t> offsets_of(const std::vector<size_t>& counts) {
  std::vector<size_t> offsets(counts.size(), 0);
  for (size_t j = 1; j < counts.size(); ++j) offsets[j] = offsets[j - 1] + counts[j - 1];
  return offsets;
}

struct CollectiveCase {
  size_t count;
  DType dtype;
  ReduceOp op;
};

// Reductions: all_reduce (out of place and in place), reduce_scatter (equal and uneven, out of
// place and in place), reduce (out of place and in place at the root).
inline void check_reductions(ProcessGroup& pg, const CollectiveCase& c) {
  const int n = pg.size();
  const int r = pg.rank();
  const DType dt = c.dtype;
  const size_t e = dtype_size(dt);
  std::vector<Bytes> inputs;
  for (int j = 0; j < n; ++j) inputs.push_back(make_input(j, c.count, dt));
  const Bytes full = reference_reduce(inputs, 0, c.count, dt, c.op);

  {
    Bytes out(c.count * e);
    pg.all_reduce(inputs[r].data(), out.data(), c.count, dt, {.op = c.op})->wait();
    EXPECT_TRUE(same_elements(out, full, dt)) << "all_reduce rank " << r;
    Bytes buf = inputs[r];
    pg.all_reduce(buf.data(), c.count, dt, {.op = c.op})->wait();
    EXPECT_TRUE(same_elements(buf, full, dt)) << "all_reduce in place rank " << r;
  }
  {
    // Equal blocks of count / n: the send buffer is the first n blocks of this rank's input.
    const size_t block = c.count / n;
    Bytes out(block * e);
    pg.reduce_scatter(inputs[r].data(), out.data(), block, dt, {.op = c.op})->wait();
    EXPECT_TRUE(same_elements(out, slice(full, r * block, block, dt), dt))
        << "reduce_scatter rank " << r;
  }
  {
    const auto counts = uneven_counts(c.count, n);
    const auto offsets = offsets_of(counts);
    const Bytes expected = slice(full, offsets[r], counts[r], dt);
    Bytes out(counts[r] * e);
    pg.reduce_scatter_v(inputs[r].data(), out.data(), counts, dt, {.op = c.op})->wait();
    EXPECT_TRUE(same_elements(out, expected, dt)) << "reduce_scatter_v rank " << r;
    Bytes buf = inputs[r];
    pg.reduce_scatter_v(buf.data(), buf.data() + offsets[r] * e, counts, dt, {.op = c.op})->wait();
    EXPECT_TRUE(same_elements(slice(buf, offsets[r], counts[r], dt), expected, dt))
        << "reduce_scatter_v in place rank " << r;
  }
  {
    const int root = n - 1;
    Bytes out(c.count * e);
    pg.reduce(inputs[r].data(), r == root ? out.data() : nullptr, c.count, dt,
              {.op = c.op, .root = root})
        ->wait();
    if (r == root) {
      EXPECT_TRUE(same_elements(out, full, dt)) << "reduce at root";
    }
    Bytes buf = inputs[r];
    pg.reduce(buf.data(), buf.data(), c.count, dt, {.op = c.op, .root = 0})->wait();
    if (r == 0) {
      EXPECT_TRUE(same_elements(buf, full, dt)) << "reduce in place at root";
    } else {
      EXPECT_TRUE(same_elements(buf, inputs[r], dt)) << "reduce must not touch a non-root's buffer";
    }
  }
}

// Data movement: all_gather (equal, uneven, in place) and broadcast.
inline void check_data_movement(ProcessGroup& pg, size_t count, DType dt) {
  const int n = pg.size();
  const int r = pg.rank();
  const size_t e = dtype_size(dt);
  {
    Bytes expected;
    for (int j = 0; j < n; ++j) {
      const Bytes in = make_input(j, count, dt, 3);
      expected.insert(expected.end(), in.begin(), in.end());
    }
    const Bytes mine = make_input(r, count, dt, 3);
    Bytes out(count * n * e);
    pg.all_gather(mine.data(), out.data(), count, dt)->wait();
    EXPECT_TRUE(same_elements(out, expected, dt)) << "all_gather rank " << r;
    Bytes in_place(count * n * e);
    // memcpy with a null pointer is undefined even for 0 bytes (count 0: empty vectors).
    if (!mine.empty()) std::memcpy(in_place.data() + r * count * e, mine.data(), mine.size());
    pg.all_gather(in_place.data() + r * count * e, in_place.data(), count, dt)->wait();
    EXPECT_TRUE(same_elements(in_place, expected, dt)) << "all_gather in place rank " << r;
  }
  {
    const auto counts = uneven_counts(count, n);
    const auto offsets = offsets_of(counts);
    const Bytes all = make_input(0, count, dt, 5);
    const Bytes mine = slice(all, offsets[r], counts[r], dt);
    Bytes out(count * e);
    pg.all_gather_v(mine.data(), out.data(), counts, dt)->wait();
    EXPECT_TRUE(same_elements(out, all, dt)) << "all_gather_v rank " << r;
  }
  {
    const int root = n / 2;
    const Bytes expected = make_input(root, count, dt, 9);
    Bytes buf = make_input(r, count, dt, 9);
    pg.broadcast(buf.data(), count, dt, {.root = root})->wait();
    EXPECT_TRUE(same_elements(buf, expected, dt)) << "broadcast rank " << r;
  }
}

// Ring exchange in both posting orders, and tag matching out of order.
inline void check_send_recv(ProcessGroup& pg, size_t count) {
  const int n = pg.size();
  const int r = pg.rank();
  const int next = (r + 1) % n;
  const int prev = (r + n - 1) % n;
  const DType dt = DType::F32;
  const Bytes mine = make_input(r, count, dt, 11);
  const Bytes from_prev = make_input(prev, count, dt, 11);
  {
    Bytes in(count * 4);
    auto s = pg.send(mine.data(), count, dt, next);
    auto v = pg.recv(in.data(), count, dt, prev);
    v->wait();
    s->wait();
    EXPECT_TRUE(same_elements(in, from_prev, dt)) << "ring send-first rank " << r;
  }
  {
    Bytes in(count * 4);
    auto v = pg.recv(in.data(), count, dt, prev);
    auto s = pg.send(mine.data(), count, dt, next);
    s->wait();
    v->wait();
    EXPECT_TRUE(same_elements(in, from_prev, dt)) << "ring recv-first rank " << r;
  }
  {
    const Bytes second = make_input(r, count, dt, 12);
    Bytes in_a(count * 4), in_b(count * 4);
    auto s1 = pg.send(mine.data(), count, dt, next, {.tag = 1});
    auto s2 = pg.send(second.data(), count, dt, next, {.tag = 2});
    auto v2 = pg.recv(in_b.data(), count, dt, prev, {.tag = 2});
    auto v1 = pg.recv(in_a.data(), count, dt, prev, {.tag = 1});
    v2->wait();
    v1->wait();
    s1->wait();
    s2->wait();
    EXPECT_TRUE(same_elements(in_a, from_prev, dt)) << "tag 1 rank " << r;
    EXPECT_TRUE(same_elements(in_b, make_input(prev, count, dt, 12), dt)) << "tag 2 rank " << r;
  }
}

}  // namespace tessera::parallel::testing
