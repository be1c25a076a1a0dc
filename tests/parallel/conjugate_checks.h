// Per-rank checks of the conjugate operators (parallel/tp/conjugate.h), shared by the thread
// tests (conjugate_test.cc) and the MPI tests (mpi/mpi_conjugate_test.cc), with t = the
// group's size. Every operand is a small integer, so every product and partial sum is an
// exact fp32 integer: summation order cannot matter and the t-rank results must equal the
// single-rank ones bit for bit. Every rank builds the whole problem from fixed seeds and
// computes the single-rank reference itself, so no check needs communication of its own.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel/comm/process_group.h"
#include "parallel/tp/conjugate.h"
#include "tests/parallel/collective_checks.h"

namespace tessera::parallel::testing {

// A row-major [rows, cols] fp32 matrix.
struct Matrix {
  size_t rows = 0;
  size_t cols = 0;
  std::vector<float> data;

  Matrix() = default;
  Matrix(size_t r, size_t c) : rows(r), cols(c), data(r * c, 0.0f) {}
  float& at(size_t i, size_t j) { return data[i * cols + j]; }
  float at(size_t i, size_t j) const { return data[i * cols + j]; }
};

// Integers in [-3, 3], a fixed function of (salt, index).
inline Matrix int_matrix(size_t rows, size_t cols, uint32_t salt) {
  Matrix m(rows, cols);
  for (size_t i = 0; i < m.data.size(); ++i) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ (salt + 1) * 40503u;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    m.data[i] = static_cast<float>(static_cast<int>(h % 7) - 3);
  }
  return m;
}

// A B^T for A [M, K], B [N, K]. Accumulators start at +0 so an exact zero is never -0.
inline Matrix matmul_nt(const Matrix& a, const Matrix& b) {
  Matrix out(a.rows, b.rows);
  for (size_t i = 0; i < a.rows; ++i)
    for (size_t j = 0; j < b.rows; ++j) {
      float acc = 0.0f;
      for (size_t k = 0; k < a.cols; ++k) acc += a.at(i, k) * b.at(j, k);
      out.at(i, j) = acc;
    }
  return out;
}

// A B for A [M, K], B [K, N].
inline Matrix matmul_nn(const Matrix& a, const Matrix& b) {
  Matrix out(a.rows, b.cols);
  for (size_t i = 0; i < a.rows; ++i)
    for (size_t j = 0; j < b.cols; ++j) {
      float acc = 0.0f;
      for (size_t k = 0; k < a.cols; ++k) acc += a.at(i, k) * b.at(k, j);
      out.at(i, j) = acc;
    }
  return out;
}

// A^T B for A [K, M], B [K, N]: a weight gradient, summed over the rows (tokens).
inline Matrix matmul_tn(const Matrix& a, const Matrix& b) {
  Matrix out(a.cols, b.cols);
  for (size_t i = 0; i < a.cols; ++i)
    for (size_t j = 0; j < b.cols; ++j) {
      float acc = 0.0f;
      for (size_t k = 0; k < a.rows; ++k) acc += a.at(k, i) * b.at(k, j);
      out.at(i, j) = acc;
    }
  return out;
}

inline Matrix row_block(const Matrix& m, size_t first, size_t n) {
  Matrix out(n, m.cols);
  std::memcpy(out.data.data(), m.data.data() + first * m.cols, n * m.cols * sizeof(float));
  return out;
}

inline Matrix col_block(const Matrix& m, size_t first, size_t n) {
  Matrix out(m.rows, n);
  for (size_t i = 0; i < m.rows; ++i)
    for (size_t j = 0; j < n; ++j) out.at(i, j) = m.at(i, first + j);
  return out;
}

// Bit-for-bit equality, naming the first differing element.
inline ::testing::AssertionResult same_matrix(const Matrix& actual, const Matrix& expected) {
  if (actual.rows != expected.rows || actual.cols != expected.cols) {
    return ::testing::AssertionFailure()
           << "shape [" << actual.rows << ", " << actual.cols << "] != [" << expected.rows << ", "
           << expected.cols << "]";
  }
  for (size_t i = 0; i < actual.data.size(); ++i) {
    if (std::memcmp(&actual.data[i], &expected.data[i], sizeof(float)) != 0) {
      return ::testing::AssertionFailure()
             << "element (" << i / actual.cols << ", " << i % actual.cols << ") of [" << actual.rows
             << ", " << actual.cols << "]: got " << actual.data[i] << ", expected "
             << expected.data[i];
    }
  }
  return ::testing::AssertionSuccess();
}

// The MLP-like pair: X [N, C], W1 [F, C] (column-parallel: split by rows), W2 [C, F]
// (row-parallel: split by columns), dZ [N, C]. Big enough that each rank's slices are
// several elements, small enough that |Z|, |dX| <= 3 * 3 * C * 3 * F stays far below 2^24.
struct MlpProblem {
  static constexpr size_t kN = 8;
  static constexpr size_t kC = 8;
  static constexpr size_t kF = 16;

  Matrix x = int_matrix(kN, kC, 1);
  Matrix w1 = int_matrix(kF, kC, 2);
  Matrix w2 = int_matrix(kC, kF, 3);
  Matrix dz = int_matrix(kN, kC, 4);

  // The single-rank forward and backward.
  Matrix y = matmul_nt(x, w1);    // [N, F]
  Matrix z = matmul_nt(y, w2);    // [N, C]
  Matrix dy = matmul_nn(dz, w2);  // [N, F]
  Matrix dx = matmul_nn(dy, w1);  // [N, C]
  Matrix dw1 = matmul_tn(dy, x);  // [F, C]
  Matrix dw2 = matmul_tn(dz, y);  // [C, F]
};

// Sizes must split evenly over the group; a check that cannot run says so.
inline ::testing::AssertionResult splits_evenly(const ProcessGroup& pg) {
  const size_t t = static_cast<size_t>(pg.size());
  if (MlpProblem::kN % t != 0 || MlpProblem::kF % t != 0) {
    return ::testing::AssertionFailure()
           << "group size " << t << " must divide N = " << MlpProblem::kN
           << " and F = " << MlpProblem::kF;
  }
  return ::testing::AssertionSuccess();
}

// f, GEMM, g with a replicated input: Z = g(sum_r (X W1_r^T) W2_r^T), and the backward
// dX = f_backward(sum_r (dZ W2_r) W1_r), whose all-reduce overlaps the weight-gradient GEMMs
// (the order a layer's backward uses). Each rank's weight gradients are its slices of the
// single-rank ones.
inline void check_tensor_parallel_mlp(ProcessGroup& pg) {
  ASSERT_TRUE(splits_evenly(pg));
  const MlpProblem p;
  const int r = pg.rank();
  const size_t f_local = MlpProblem::kF / pg.size();
  const Matrix w1_r = row_block(p.w1, r * f_local, f_local);  // [F/t, C]
  const Matrix w2_r = col_block(p.w2, r * f_local, f_local);  // [C, F/t]

  // Forward. Column-parallel: no communication on the way in (f forward is the identity).
  const Matrix y_r = matmul_nt(p.x, w1_r);
  EXPECT_TRUE(same_matrix(y_r, col_block(p.y, r * f_local, f_local))) << "Y_r rank " << r;
  Matrix z = matmul_nt(y_r, w2_r);  // this rank's partial sum
  tp::reduce_from_region_forward(pg, z.data.data(), z.data.size(), DType::F32)->wait();
  EXPECT_TRUE(same_matrix(z, p.z)) << "Z rank " << r;

  // Backward. g backward is the identity: dZ is used as it is.
  const Matrix dy_r = matmul_nn(p.dz, w2_r);
  EXPECT_TRUE(same_matrix(dy_r, col_block(p.dy, r * f_local, f_local))) << "dY_r rank " << r;
  Matrix dx = matmul_nn(dy_r, w1_r);  // partial
  WorkPtr work = tp::copy_to_region_backward(pg, dx.data.data(), dx.data.size(), DType::F32);
  const Matrix dw1_r = matmul_tn(dy_r, p.x);
  const Matrix dw2_r = matmul_tn(p.dz, y_r);
  work->wait();
  EXPECT_TRUE(work->is_completed());
  EXPECT_TRUE(same_matrix(dx, p.dx)) << "dX rank " << r;
  EXPECT_TRUE(same_matrix(dw1_r, row_block(p.dw1, r * f_local, f_local))) << "dW1_r rank " << r;
  EXPECT_TRUE(same_matrix(dw2_r, col_block(p.dw2, r * f_local, f_local))) << "dW2_r rank " << r;
}

// The same pair with sequence parallelism: X arrives split by rows (tokens), is gathered
// before the column-parallel GEMM, and the row-parallel partials are reduce-scattered back to
// row blocks. Backward: the dZ blocks are all-gathered, and the partial dX reduce-scattered,
// its reduction overlapping the weight-gradient GEMMs.
inline void check_sequence_parallel_mlp(ProcessGroup& pg) {
  ASSERT_TRUE(splits_evenly(pg));
  const MlpProblem p;
  const int r = pg.rank();
  const size_t t = static_cast<size_t>(pg.size());
  const size_t n_local = MlpProblem::kN / t;
  const size_t f_local = MlpProblem::kF / t;
  const size_t block = n_local * MlpProblem::kC;
  const Matrix w1_r = row_block(p.w1, r * f_local, f_local);
  const Matrix w2_r = col_block(p.w2, r * f_local, f_local);

  // Forward.
  const Matrix x_r = row_block(p.x, r * n_local, n_local);
  Matrix x(MlpProblem::kN, MlpProblem::kC);
  tp::gather_sequence_forward(pg, x_r.data.data(), x.data.data(), block, DType::F32)->wait();
  EXPECT_TRUE(same_matrix(x, p.x)) << "gathered X rank " << r;
  const Matrix y_r = matmul_nt(x, w1_r);
  const Matrix z_partial = matmul_nt(y_r, w2_r);
  Matrix z_r(n_local, MlpProblem::kC);
  tp::reduce_scatter_sequence_forward(pg, z_partial.data.data(), z_r.data.data(), block, DType::F32)
      ->wait();
  EXPECT_TRUE(same_matrix(z_r, row_block(p.z, r * n_local, n_local))) << "Z block rank " << r;

  // Backward.
  const Matrix dz_r = row_block(p.dz, r * n_local, n_local);
  Matrix dz(MlpProblem::kN, MlpProblem::kC);
  tp::reduce_scatter_sequence_backward(pg, dz_r.data.data(), dz.data.data(), block, DType::F32)
      ->wait();
  EXPECT_TRUE(same_matrix(dz, p.dz)) << "gathered dZ rank " << r;
  const Matrix dy_r = matmul_nn(dz, w2_r);
  const Matrix dx_partial = matmul_nn(dy_r, w1_r);
  Matrix dx_r(n_local, MlpProblem::kC);
  WorkPtr work =
      tp::gather_sequence_backward(pg, dx_partial.data.data(), dx_r.data.data(), block, DType::F32);
  const Matrix dw1_r = matmul_tn(dy_r, x);
  const Matrix dw2_r = matmul_tn(dz, y_r);
  work->wait();
  EXPECT_TRUE(work->is_completed());
  EXPECT_TRUE(same_matrix(dx_r, row_block(p.dx, r * n_local, n_local))) << "dX block rank " << r;
  EXPECT_TRUE(same_matrix(dw1_r, row_block(p.dw1, r * f_local, f_local))) << "dW1_r rank " << r;
  EXPECT_TRUE(same_matrix(dw2_r, col_block(p.dw2, r * f_local, f_local))) << "dW2_r rank " << r;
}

// Small integers (|x| <= 3) in `dtype`: their sums over up to 8 ranks are exact in f16 and
// bf16 too, so the checks hold the operators to passing the dtype through, not to rounding.
inline Bytes small_int_input(int rank, size_t count, DType dtype, uint32_t salt) {
  const Matrix m = int_matrix(1, count, salt * 1000u + static_cast<uint32_t>(rank));
  Bytes out(count * dtype_size(dtype));
  for (size_t i = 0; i < count; ++i) store_element(out, i, dtype, m.data[i]);
  return out;
}

// Each operator on its own, as the collective it names: rank r's block is `block` elements
// (its tokens), the full buffers t * block, per-rank inputs different on every rank.
inline void check_region_operators(ProcessGroup& pg, size_t block, DType dt) {
  const int t = pg.size();
  const int r = pg.rank();
  const size_t full = block * t;
  auto inputs = [&](uint32_t salt, size_t count) {
    std::vector<Bytes> all;
    for (int j = 0; j < t; ++j) all.push_back(small_int_input(j, count, dt, salt));
    return all;
  };

  {
    const auto partials = inputs(1, full);
    Bytes buf = partials[r];
    tp::reduce_from_region_forward(pg, buf.data(), full, dt)->wait();
    EXPECT_TRUE(same_elements(buf, reference_reduce(partials, 0, full, dt, ReduceOp::Sum), dt))
        << "reduce_from_region_forward rank " << r;
  }
  {
    const auto grads = inputs(2, full);
    Bytes buf = grads[r];
    tp::copy_to_region_backward(pg, buf.data(), full, dt)->wait();
    EXPECT_TRUE(same_elements(buf, reference_reduce(grads, 0, full, dt, ReduceOp::Sum), dt))
        << "copy_to_region_backward rank " << r;
  }
  {
    // gather_sequence: forward all-gathers the blocks of one whole tensor; backward sums each
    // rank's full gradient and keeps this rank's block.
    const Bytes whole = small_int_input(0, full, dt, 3);
    const Bytes mine = slice(whole, r * block, block, dt);
    Bytes gathered(full * dtype_size(dt));
    tp::gather_sequence_forward(pg, mine.data(), gathered.data(), block, dt)->wait();
    EXPECT_TRUE(same_elements(gathered, whole, dt)) << "gather_sequence_forward rank " << r;

    const auto full_grads = inputs(4, full);
    Bytes local_grad(block * dtype_size(dt));
    tp::gather_sequence_backward(pg, full_grads[r].data(), local_grad.data(), block, dt)->wait();
    EXPECT_TRUE(same_elements(
        local_grad, reference_reduce(full_grads, r * block, block, dt, ReduceOp::Sum), dt))
        << "gather_sequence_backward rank " << r;
  }
  {
    // reduce_scatter_sequence: the mirror image.
    const auto partials = inputs(5, full);
    Bytes local(block * dtype_size(dt));
    tp::reduce_scatter_sequence_forward(pg, partials[r].data(), local.data(), block, dt)->wait();
    EXPECT_TRUE(
        same_elements(local, reference_reduce(partials, r * block, block, dt, ReduceOp::Sum), dt))
        << "reduce_scatter_sequence_forward rank " << r;

    const Bytes whole = small_int_input(0, full, dt, 6);
    const Bytes mine = slice(whole, r * block, block, dt);
    Bytes full_grad(full * dtype_size(dt));
    tp::reduce_scatter_sequence_backward(pg, mine.data(), full_grad.data(), block, dt)->wait();
    EXPECT_TRUE(same_elements(full_grad, whole, dt))
        << "reduce_scatter_sequence_backward rank " << r;
  }
}

// Asynchrony: all six operators issued back to back on buffers large enough (over the 64 KiB
// the thread and MPI backends run inline) to go to the progress thread, waited in reverse
// order, and only then read. The const inputs must be untouched after the waits.
inline void check_operators_async(ProcessGroup& pg) {
  constexpr size_t kBlock = size_t{1} << 15;  // floats in a rank's block: 128 KiB
  const DType dt = DType::F32;
  const int t = pg.size();
  const int r = pg.rank();
  const size_t full = kBlock * t;
  auto inputs = [&](uint32_t salt, size_t count) {
    std::vector<Bytes> all;
    for (int j = 0; j < t; ++j) all.push_back(small_int_input(j, count, dt, salt));
    return all;
  };
  const auto g_partials = inputs(11, full);
  const auto f_grads = inputs(12, full);
  const Bytes gather_whole = small_int_input(0, full, dt, 13);
  const auto gather_grads = inputs(14, full);
  const auto scatter_partials = inputs(15, full);
  const Bytes scatter_whole = small_int_input(0, full, dt, 16);

  Bytes g_buf = g_partials[r];
  Bytes f_buf = f_grads[r];
  const Bytes gather_mine = slice(gather_whole, r * kBlock, kBlock, dt);
  Bytes gathered(full * 4);
  Bytes gather_local_grad(kBlock * 4);
  Bytes scattered(kBlock * 4);
  const Bytes scatter_mine = slice(scatter_whole, r * kBlock, kBlock, dt);
  Bytes scatter_full_grad(full * 4);

  std::vector<WorkPtr> works;
  works.push_back(tp::reduce_from_region_forward(pg, g_buf.data(), full, dt));
  works.push_back(tp::copy_to_region_backward(pg, f_buf.data(), full, dt));
  works.push_back(tp::gather_sequence_forward(pg, gather_mine.data(), gathered.data(), kBlock, dt));
  works.push_back(tp::gather_sequence_backward(pg, gather_grads[r].data(), gather_local_grad.data(),
                                               kBlock, dt));
  works.push_back(tp::reduce_scatter_sequence_forward(pg, scatter_partials[r].data(),
                                                      scattered.data(), kBlock, dt));
  works.push_back(tp::reduce_scatter_sequence_backward(pg, scatter_mine.data(),
                                                       scatter_full_grad.data(), kBlock, dt));
  for (auto it = works.rbegin(); it != works.rend(); ++it) (*it)->wait();
  for (const auto& work : works) EXPECT_TRUE(work->is_completed());

  EXPECT_TRUE(same_elements(g_buf, reference_reduce(g_partials, 0, full, dt, ReduceOp::Sum), dt))
      << "reduce_from_region_forward rank " << r;
  EXPECT_TRUE(same_elements(f_buf, reference_reduce(f_grads, 0, full, dt, ReduceOp::Sum), dt))
      << "copy_to_region_backward rank " << r;
  EXPECT_TRUE(same_elements(gathered, gather_whole, dt)) << "gather_sequence_forward rank " << r;
  EXPECT_TRUE(same_elements(
      gather_local_grad, reference_reduce(gather_grads, r * kBlock, kBlock, dt, ReduceOp::Sum), dt))
      << "gather_sequence_backward rank " << r;
  EXPECT_TRUE(same_elements(
      scattered, reference_reduce(scatter_partials, r * kBlock, kBlock, dt, ReduceOp::Sum), dt))
      << "reduce_scatter_sequence_forward rank " << r;
  EXPECT_TRUE(same_elements(scatter_full_grad, scatter_whole, dt))
      << "reduce_scatter_sequence_backward rank " << r;
  EXPECT_TRUE(same_elements(gather_mine, slice(gather_whole, r * kBlock, kBlock, dt), dt))
      << "gather_sequence_forward's input changed, rank " << r;
  EXPECT_TRUE(same_elements(gather_grads[r], small_int_input(r, full, dt, 14), dt))
      << "gather_sequence_backward's input changed, rank " << r;
  EXPECT_TRUE(same_elements(scatter_partials[r], small_int_input(r, full, dt, 15), dt))
      << "reduce_scatter_sequence_forward's input changed, rank " << r;
}

}  // namespace tessera::parallel::testing
