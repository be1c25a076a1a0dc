// The word embedding and the tied head in vocabulary row chunks (cpu_kernels.h, and every CPU
// ops table's wiring of them). Two kinds of check:
// - gradients in double against central finite differences (grad_check.h; kGradTol), for the
//   chunked cross-entropy (fold over uneven chunks, finish, chunk_backward) and the chunked
//   embedding;
// - the chunked ops against the fused ones they replace, through kernels::make_ops for f32,
//   f64, bf16 and f16 storage, over one chunk, three uneven chunks and chunkings with a
//   single-row chunk: the embedding bit for bit (forward and backward, gradients starting
//   non-zero), the cross-entropy within rounding (its chunks rescale a running sum).
//
// Tolerances of the head against lm_head_cross_entropy, as rel_error (max|diff| / max(1,
// max|ref|)): 1e-12 in double; 1e-5 for f32 losses and gradients (the rescaling's exp and the
// different summation order); 16-bit tables round dlogits to 16 bits for the GEMMs, and two
// f32 values that differ in the last bits can round to neighbouring 16-bit values, so their
// gradients are held to a few 16-bit ulps of the largest one (as cpu_mixed_test.cc's head).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "runtime/kernels/cpu_kernels.h"
#include "runtime/kernels/ops.h"
#include "tests/kernels/grad_check.h"

namespace tessera::kernels::cpu {
namespace {

using testing::dot;
using testing::kGradTol;
using testing::numeric_grad;
using testing::random_tokens;
using testing::random_vector;
using testing::rel_error;
using Vec = std::vector<double>;
using Chunks = std::vector<int64_t>;  // sizes of consecutive vocabulary chunks

// fn(begin, rows) for each chunk, in order.
template <typename F>
void for_each_chunk(const Chunks& chunks, F&& fn) {
  int64_t begin = 0;
  for (const int64_t rows : chunks) {
    fn(begin, rows);
    begin += rows;
  }
}

std::string chunks_label(const Chunks& chunks) {
  std::string label = "chunks";
  for (const int64_t rows : chunks) label += fmt::format(" {}", rows);
  return label;
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Columns [begin, begin + cols) of a row-major [N, V] matrix, as a contiguous [N, cols] one.
template <typename T>
std::vector<T> columns(const std::vector<T>& m, int64_t N, int64_t V, int64_t begin, int64_t cols) {
  std::vector<T> out(N * cols);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t j = 0; j < cols; ++j) out[n * cols + j] = m[n * V + begin + j];
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Gradient checks in double

// Targets that land in the first, a middle and the last of the chunks {4, 1, 6, 2} of V = 13.
constexpr int64_t kGradV = 13;
const Chunks kGradChunks = {4, 1, 6, 2};
const std::vector<int32_t> kGradTargets = {0, 4, 5, 12, 3, 10, 11};

// The chunked softmax cross-entropy of logits [N, V], times grad_scale; with grad, the
// gradient of that wrt the logits ([N, V]) is written there.
double chunked_loss(const Vec& logits, const std::vector<int32_t>& targets, int64_t N, int64_t V,
                    const Chunks& chunks, double grad_scale, Vec* grad) {
  Vec max(N, -INFINITY), sum(N, 0.0), target_logit(N, 0.0);
  for_each_chunk(chunks, [&](int64_t begin, int64_t cols) {
    const Vec chunk = columns(logits, N, V, begin, cols);
    cross_entropy_fold(max.data(), sum.data(), target_logit.data(), chunk.data(), targets.data(), N,
                       cols, begin);
  });
  const double loss_sum =
      cross_entropy_finish<double>(max.data(), nullptr, sum.data(), target_logit.data(), N);
  if (grad != nullptr) {
    for_each_chunk(chunks, [&](int64_t begin, int64_t cols) {
      Vec chunk = columns(logits, N, V, begin, cols);
      cross_entropy_chunk_backward(chunk.data(), max.data(), targets.data(), N, cols, begin,
                                   grad_scale);
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t j = 0; j < cols; ++j) (*grad)[n * V + begin + j] = chunk[n * cols + j];
      }
    });
  }
  return loss_sum * grad_scale;
}

TEST(VocabChunksGradTest, CrossEntropyLogitGradientsMatchFiniteDifferences) {
  const int64_t N = static_cast<int64_t>(kGradTargets.size()), V = kGradV;
  const double grad_scale = 0.37;
  Vec logits = random_vector(N * V, 201, -3.0, 3.0);

  // The loss against a naive logsumexp over the whole row, and the per-row losses.
  Vec max(N, -INFINITY), sum(N, 0.0), target_logit(N, 0.0), losses(N);
  for_each_chunk(kGradChunks, [&](int64_t begin, int64_t cols) {
    const Vec chunk = columns(logits, N, V, begin, cols);
    cross_entropy_fold(max.data(), sum.data(), target_logit.data(), chunk.data(),
                       kGradTargets.data(), N, cols, begin);
  });
  const double loss_sum =
      cross_entropy_finish(max.data(), losses.data(), sum.data(), target_logit.data(), N);
  double want_sum = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    double z = 0.0;
    for (int64_t j = 0; j < V; ++j) z += std::exp(logits[n * V + j]);
    const double want = std::log(z) - logits[n * V + kGradTargets[n]];
    EXPECT_NEAR(losses[n], want, 1e-12) << "row " << n;
    EXPECT_NEAR(max[n], std::log(z), 1e-12) << "lse of row " << n;
    want_sum += want;
  }
  EXPECT_NEAR(loss_sum, want_sum, 1e-12 * std::abs(want_sum));

  Vec grad(N * V, 0.0);
  chunked_loss(logits, kGradTargets, N, V, kGradChunks, grad_scale, &grad);
  const Vec numeric = numeric_grad(logits, [&] {
    return chunked_loss(logits, kGradTargets, N, V, kGradChunks, grad_scale, nullptr);
  });
  EXPECT_LT(rel_error(grad, numeric), kGradTol);
}

// The tied head by chunks of wte rows: logits_c = x @ wte_c^T (gemm), the fold, finish, and
// backward's dx += dlogits_c @ wte_c, dwte_c += dlogits_c^T @ x.
double chunked_head(const Vec& x, const Vec& wte, const std::vector<int32_t>& targets, int64_t N,
                    int64_t C, const Chunks& chunks, double grad_scale, Vec* dx, Vec* dwte) {
  Vec max(N, -INFINITY), sum(N, 0.0), target_logit(N, 0.0), logits;
  auto chunk_logits = [&](int64_t begin, int64_t rows) {
    logits.assign(N * rows, 0.0);
    gemm<double>(false, true, N, rows, C, 1.0, x.data(), C, wte.data() + begin * C, C, 0.0,
                 logits.data(), rows);
  };
  for_each_chunk(chunks, [&](int64_t begin, int64_t rows) {
    chunk_logits(begin, rows);
    cross_entropy_fold(max.data(), sum.data(), target_logit.data(), logits.data(), targets.data(),
                       N, rows, begin);
  });
  const double loss_sum =
      cross_entropy_finish<double>(max.data(), nullptr, sum.data(), target_logit.data(), N);
  if (dx != nullptr) {
    for_each_chunk(chunks, [&](int64_t begin, int64_t rows) {
      chunk_logits(begin, rows);
      cross_entropy_chunk_backward(logits.data(), max.data(), targets.data(), N, rows, begin,
                                   grad_scale);
      gemm<double>(false, false, N, C, rows, 1.0, logits.data(), rows, wte.data() + begin * C, C,
                   1.0, dx->data(), C);
      gemm<double>(true, false, rows, C, N, 1.0, logits.data(), rows, x.data(), C, 1.0,
                   dwte->data() + begin * C, C);
    });
  }
  return loss_sum * grad_scale;
}

TEST(VocabChunksGradTest, ChunkedHeadGradientsMatchFiniteDifferences) {
  const int64_t N = static_cast<int64_t>(kGradTargets.size()), C = 5, V = kGradV;
  const double grad_scale = 0.61;
  Vec x = random_vector(N * C, 211, -1.5, 1.5), wte = random_vector(V * C, 212, -1.5, 1.5);
  Vec dx(N * C, 0.0), dwte(V * C, 0.0);
  chunked_head(x, wte, kGradTargets, N, C, kGradChunks, grad_scale, &dx, &dwte);
  auto loss = [&] {
    return chunked_head(x, wte, kGradTargets, N, C, kGradChunks, grad_scale, nullptr, nullptr);
  };
  EXPECT_LT(rel_error(dx, numeric_grad(x, loss)), kGradTol);
  EXPECT_LT(rel_error(dwte, numeric_grad(wte, loss)), kGradTol);
}

TEST(VocabChunksGradTest, EmbeddingRowsMatchFiniteDifferences) {
  const int B = 2, T = 5, C = 3;
  const int64_t V = 7, N = int64_t{B} * T;
  const Chunks chunks = {3, 1, 3};
  // Token 1 appears four times, 3 (the single-row chunk) three times, 5 never.
  const std::vector<int32_t> tokens = {1, 3, 1, 1, 0, 2, 6, 3, 3, 1};
  Vec wte = random_vector(V * C, 221), wpe = random_vector(T * C, 222);
  const Vec r = random_vector(N * C, 223);
  Vec out(N * C);
  auto loss = [&] {
    position_embedding_forward(out.data(), wpe.data(), B, T, C);
    for_each_chunk(chunks, [&](int64_t begin, int64_t rows) {
      token_embedding_rows_forward(out.data(), tokens.data(), wte.data() + begin * C, begin, rows,
                                   N, C);
    });
    return dot(out, r);
  };
  Vec dwte(V * C, 0.0), dwpe(T * C, 0.0);
  position_embedding_backward(dwpe.data(), r.data(), B, T, C);
  for_each_chunk(chunks, [&](int64_t begin, int64_t rows) {
    token_embedding_rows_backward(dwte.data() + begin * C, r.data(), tokens.data(), begin, rows, N,
                                  C);
  });
  EXPECT_LT(rel_error(dwte, numeric_grad(wte, loss)), kGradTol);
  EXPECT_LT(rel_error(dwpe, numeric_grad(wpe, loss)), kGradTol);
  for (int c = 0; c < C; ++c) EXPECT_EQ(dwte[5 * C + c], 0.0) << "unused token 5";
}

// ---------------------------------------------------------------------------------------
// The chunked ops against the fused ones, through every CPU ops table

// A stored (storage()) copy of values, as the model keeps parameters.
template <typename T>
std::vector<unsigned char> stored(Ops<T>& ops, const std::vector<T>& values) {
  std::vector<unsigned char> s(values.size() * ops.storage_size());
  ops.save(s.data(), values.data(), static_cast<int64_t>(values.size()));
  return s;
}

class VocabChunksTableTest : public ::testing::TestWithParam<DType> {};
INSTANTIATE_TEST_SUITE_P(Storage, VocabChunksTableTest,
                         ::testing::Values(DType::F32, DType::F64, DType::BF16, DType::F16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

template <typename T>
void check_embedding_matches_fused(DType storage) {
  const auto ops = make_ops<T>(Device::cpu(), storage);
  // C crosses the 64-channel blocks the backward passes are threaded over; N > V, so tokens
  // repeat.
  const int B = 3, T_ = 9, C = 130;
  const int64_t V = 11, N = int64_t{B} * T_;
  auto tokens = random_tokens(N, static_cast<int32_t>(V), 231);
  for (int32_t& t : tokens) t = t == 7 ? 8 : t;  // row 7 is never used
  tokens[3] = 5;                                 // row 5 (a single-row chunk below) is
  const auto wte = random_vector<T>(V * C, 232), wpe = random_vector<T>(int64_t{T_} * C, 233);
  const auto wte_s = stored(*ops, wte), wpe_s = stored(*ops, wpe);
  const auto dout = random_vector<T>(N * C, 234);
  const auto dwte0 = random_vector<T>(V * C, 235), dwpe0 = random_vector<T>(int64_t{T_} * C, 236);

  std::vector<T> fused_out(N * C);
  ops->embedding_forward(fused_out.data(), tokens.data(), wte_s.data(), wpe_s.data(), B, T_, C);
  auto fused_dwte = dwte0, fused_dwpe = dwpe0;
  ops->embedding_backward(fused_dwte.data(), fused_dwpe.data(), dout.data(), tokens.data(), B, T_,
                          C);

  for (const Chunks& chunks : {Chunks{V}, Chunks{3, 6, 2}, Chunks{5, 1, 5}}) {
    SCOPED_TRACE(chunks_label(chunks));
    auto out = random_vector<T>(N * C, 237);  // position_embedding_forward overwrites it
    ops->position_embedding_forward(out.data(), wpe_s.data(), B, T_, C);
    for_each_chunk(chunks, [&](int64_t begin, int64_t rows) {
      ops->token_embedding_rows_forward(out.data(), tokens.data(), ops->at(wte_s.data(), begin * C),
                                        begin, rows, N, C);
    });
    EXPECT_TRUE(same_bits(out, fused_out)) << "forward";

    auto dwte = dwte0, dwpe = dwpe0;
    ops->position_embedding_backward(dwpe.data(), dout.data(), B, T_, C);
    for_each_chunk(chunks, [&](int64_t begin, int64_t rows) {
      ops->token_embedding_rows_backward(dwte.data() + begin * C, dout.data(), tokens.data(), begin,
                                         rows, N, C);
    });
    EXPECT_TRUE(same_bits(dwpe, fused_dwpe)) << "dwpe";
    EXPECT_TRUE(same_bits(dwte, fused_dwte)) << "dwte";
    EXPECT_EQ(std::memcmp(dwte.data() + 7 * C, dwte0.data() + 7 * C, C * sizeof(T)), 0)
        << "unused row 7";
  }

  // One chunk alone, rows [4, 8): rows of out whose token is elsewhere keep their bits, and so
  // do the rows of dwte that no token hits (row 7 at least).
  const int64_t begin = 4, rows = 4;
  const auto out0 = random_vector<T>(N * C, 238);
  auto out = out0;
  ops->token_embedding_rows_forward(out.data(), tokens.data(), ops->at(wte_s.data(), begin * C),
                                    begin, rows, N, C);
  auto dwte = dwte0;
  ops->token_embedding_rows_backward(dwte.data() + begin * C, dout.data(), tokens.data(), begin,
                                     rows, N, C);
  std::vector<T> wte_view(V * C);
  const T* wte_t = ops->view(wte_s.data(), wte_view.data(), V * C);
  std::vector<bool> used(V, false);
  int64_t in_chunk = 0;
  for (int64_t i = 0; i < N; ++i) {
    const bool hit = tokens[i] >= begin && tokens[i] < begin + rows;
    in_chunk += hit;
    used[tokens[i]] = used[tokens[i]] || hit;
    for (int c = 0; c < C; ++c) {
      const T want = hit ? out0[i * C + c] + wte_t[tokens[i] * C + c] : out0[i * C + c];
      ASSERT_EQ(out[i * C + c], want) << "row " << i << " token " << tokens[i] << " c " << c;
    }
  }
  EXPECT_GT(in_chunk, 0);
  EXPECT_LT(in_chunk, N);
  EXPECT_FALSE(used[7]);
  for (int64_t v = 0; v < V; ++v) {
    if (used[v]) continue;
    EXPECT_EQ(std::memcmp(dwte.data() + v * C, dwte0.data() + v * C, C * sizeof(T)), 0)
        << "row " << v;
  }
}

TEST_P(VocabChunksTableTest, EmbeddingChunksMatchFusedBitForBit) {
  if (GetParam() == DType::F64) {
    check_embedding_matches_fused<double>(GetParam());
  } else {
    check_embedding_matches_fused<float>(GetParam());
  }
}

template <typename T>
void check_head_matches_fused(DType storage) {
  const auto ops = make_ops<T>(Device::cpu(), storage);
  // N spans two of the fused head's row chunks; V leaves vector tails.
  const int64_t N = ops->head_chunk_rows() + 44, C = 24, V = 77;
  const T grad_scale = T(0.5);
  auto targets = random_tokens(N, static_cast<int32_t>(V), 241);
  targets[0] = 0;      // the first chunk of each chunking
  targets[1] = V - 1;  // the last
  targets[2] = 38;     // the single-row chunk of {38, 1, 38}
  targets[3] = 30;     // the middle chunk of {20, 40, 17}
  const auto x = random_vector<T>(N * C, 242), wte = random_vector<T>(V * C, 243);
  const auto x_s = stored(*ops, x), wte_s = stored(*ops, wte);
  const auto dx0 = random_vector<T>(N * C, 244, -0.01, 0.01);
  const auto dwte0 = random_vector<T>(V * C, 245, -0.01, 0.01);

  auto fused_dx = dx0, fused_dwte = dwte0;
  std::vector<T> fused_losses(N), scratch(ops->head_chunk_rows() * V);
  std::vector<unsigned char> scratch16(scratch.size() * ops->storage_size());
  const double fused_sum = ops->lm_head_cross_entropy(
      fused_dx.data(), fused_dwte.data(), fused_losses.data(), x_s.data(), wte_s.data(),
      targets.data(), N, C, V, grad_scale, scratch.data(), scratch16.data());

  const double loss_tol = storage == DType::F64 ? 1e-12 : 1e-5;
  const double grad_tol = storage == DType::F64    ? 1e-12
                          : storage == DType::F32  ? 1e-5
                          : storage == DType::BF16 ? 0x1p-8
                                                   : 0x1p-11;
  for (const Chunks& chunks : {Chunks{V}, Chunks{20, 40, 17}, Chunks{38, 1, 38}}) {
    SCOPED_TRACE(chunks_label(chunks));
    std::vector<T> max(N, -std::numeric_limits<T>::infinity()), sum(N, T(0)), target_logit(N, T(0)),
        logits(N * V);
    std::vector<unsigned char> dout16(logits.size() * ops->storage_size());
    for_each_chunk(chunks, [&](int64_t begin, int64_t rows) {
      ops->linear_forward(logits.data(), x_s.data(), ops->at(wte_s.data(), begin * C), nullptr, N,
                          C, rows);
      ops->cross_entropy_fold(max.data(), sum.data(), target_logit.data(), logits.data(),
                              targets.data(), N, rows, begin);
    });
    // Without losses: the same sum, and the same lse.
    auto lse_only = max;
    const double sum_only =
        ops->cross_entropy_finish(lse_only.data(), nullptr, sum.data(), target_logit.data(), N);
    std::vector<T> losses(N);
    const double loss_sum =
        ops->cross_entropy_finish(max.data(), losses.data(), sum.data(), target_logit.data(), N);
    EXPECT_EQ(sum_only, loss_sum);
    EXPECT_TRUE(same_bits(lse_only, max));
    EXPECT_LT(rel_error(losses, fused_losses), loss_tol);
    EXPECT_NEAR(loss_sum, fused_sum, loss_tol * std::abs(fused_sum));

    auto dx = dx0, dwte = dwte0;
    for_each_chunk(chunks, [&](int64_t begin, int64_t rows) {
      const void* wte_rows = ops->at(wte_s.data(), begin * C);
      ops->linear_forward(logits.data(), x_s.data(), wte_rows, nullptr, N, C, rows);
      ops->cross_entropy_chunk_backward(logits.data(), max.data(), targets.data(), N, rows, begin,
                                        grad_scale);
      ops->linear_backward(dx.data(), dwte.data() + begin * C, nullptr, logits.data(),
                           dout16.data(), x_s.data(), wte_rows, N, C, rows);
    });
    EXPECT_LT(rel_error(dx, fused_dx), grad_tol) << "dx";
    EXPECT_LT(rel_error(dwte, fused_dwte), grad_tol) << "dwte";
  }
}

TEST_P(VocabChunksTableTest, CrossEntropyChunksMatchFusedHead) {
  if (GetParam() == DType::F64) {
    check_head_matches_fused<double>(GetParam());
  } else {
    check_head_matches_fused<float>(GetParam());
  }
}

// ---------------------------------------------------------------------------------------
// Edge cases of the fold

TEST(CrossEntropyFoldTest, TargetLogitWrittenOnlyByItsChunk) {
  const int64_t N = 4, V = 6;
  const std::vector<int32_t> targets = {0, 2, 3, 5};
  const auto logits = random_vector<float>(N * V, 251, -2.0, 2.0);
  std::vector<float> max(N, -INFINITY), sum(N, 0.0f), target_logit(N, 1234.0f);
  const auto first = columns(logits, N, V, 0, 3);  // columns 0..2: rows 0 and 1's targets
  cross_entropy_fold(max.data(), sum.data(), target_logit.data(), first.data(), targets.data(), N,
                     3, 0);
  EXPECT_EQ(target_logit[0], logits[0 * V + 0]);
  EXPECT_EQ(target_logit[1], logits[1 * V + 2]);
  EXPECT_EQ(target_logit[2], 1234.0f);
  EXPECT_EQ(target_logit[3], 1234.0f);
  // An empty chunk changes nothing.
  const auto saved_max = max, saved_sum = sum;
  cross_entropy_fold(max.data(), sum.data(), target_logit.data(), first.data(), targets.data(), N,
                     0, 3);
  EXPECT_TRUE(same_bits(max, saved_max));
  EXPECT_TRUE(same_bits(sum, saved_sum));
  const auto second = columns(logits, N, V, 3, 3);
  cross_entropy_fold(max.data(), sum.data(), target_logit.data(), second.data(), targets.data(), N,
                     3, 3);
  EXPECT_EQ(target_logit[2], logits[2 * V + 3]);
  EXPECT_EQ(target_logit[3], logits[3 * V + 5]);
  for (int64_t n = 0; n < N; ++n) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < V; ++j) mx = std::max(mx, logits[n * V + j]);
    EXPECT_EQ(max[n], mx) << "row " << n;
  }
}

// Chunks whose maximum keeps growing rescale the running sum every time; one far below the
// running maximum adds (almost) nothing. Either way the lse is that of the whole row.
TEST(CrossEntropyFoldTest, RescalesWhenTheMaximumGrows) {
  const int64_t N = 1;
  const std::vector<int32_t> targets = {1};
  for (const bool increasing : {true, false}) {
    SCOPED_TRACE(increasing ? "increasing chunks" : "decreasing chunks");
    std::vector<float> max(N, -INFINITY), sum(N, 0.0f), target_logit(N, 0.0f);
    double z = 0.0;
    for (int k = 0; k < 5; ++k) {
      const float base = increasing ? 10.0f * k : -10.0f * k;
      const std::vector<float> chunk = {base, base + 0.5f};
      z += std::exp(double(chunk[0])) + std::exp(double(chunk[1]));
      cross_entropy_fold(max.data(), sum.data(), target_logit.data(), chunk.data(), targets.data(),
                         N, 2, 2 * k);
    }
    std::vector<float> losses(N);
    cross_entropy_finish(max.data(), losses.data(), sum.data(), target_logit.data(), N);
    EXPECT_NEAR(max[0], std::log(z), 1e-5 * std::log(z));
    EXPECT_NEAR(losses[0], std::log(z) - 0.5, 1e-5 * std::log(z));
  }
}

// Vocabulary parallelism: each "rank" folds its own columns; masking the empty rows, taking the
// max over ranks, rescaling and summing the sums and target logits gives the one-rank
// statistics, hence its loss and lse. Rank 2 holds no columns at all (a rank of padding), row 0
// has all its large logits on rank 1 and its target on rank 0.
TEST(CrossEntropyMergeTest, RanksMergedEqualTheWholeVocabulary) {
  const int64_t N = 4, V = 10;
  const Chunks ranks = {6, 4, 0};
  std::vector<float> logits = {-3, -2, -1, -4, -5, -6, 40, 41, 39, 42,  //
                               1, 2, 3, 4, 5, 6, 7, 8, 9, 10,           //
                               -300, -301, -302, -303, -304, -305, -306, -307, -308, -309,
                               0.5, -0.5, 2.5, 1.5, 0, 0, 3, -1, 2, 1};
  const std::vector<int32_t> targets = {0, 9, 4, 6};
  std::vector<float> max(N, 0.0f), sum(N, 0.0f), target_logit(N, 0.0f), losses(N);
  cross_entropy_fold(max.data(), sum.data(), target_logit.data(), logits.data(), targets.data(),
                     N, V, 0);
  cross_entropy_finish(max.data(), losses.data(), sum.data(), target_logit.data(), N);
  // Per rank, then merged as Stage::chunked_head does over the group.
  const size_t R = ranks.size();
  std::vector<std::vector<float>> rmax(R, std::vector<float>(N, 0.0f)),
      rsum(R, std::vector<float>(N, 0.0f)), rtarget(R, std::vector<float>(N, 0.0f));
  int64_t begin = 0;
  for (size_t r = 0; r < R; ++r) {
    if (ranks[r] > 0) {
      std::vector<float> cols(static_cast<size_t>(N * ranks[r]));
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0; j < ranks[r]; ++j) cols[n * ranks[r] + j] = logits[n * V + begin + j];
      cross_entropy_fold(rmax[r].data(), rsum[r].data(), rtarget[r].data(), cols.data(),
                         targets.data(), N, ranks[r], begin);
    }
    cross_entropy_mask_empty(rmax[r].data(), rsum[r].data(), N);
    begin += ranks[r];
  }
  EXPECT_EQ(rmax[2][0], std::numeric_limits<float>::lowest());  // ignored by the max
  std::vector<float> global_max(N, std::numeric_limits<float>::lowest());
  for (size_t r = 0; r < R; ++r)
    for (int64_t n = 0; n < N; ++n) global_max[n] = std::max(global_max[n], rmax[r][n]);
  std::vector<float> merged_sum(N, 0.0f), merged_target(N, 0.0f);
  for (size_t r = 0; r < R; ++r) {
    cross_entropy_rescale(rmax[r].data(), rsum[r].data(), global_max.data(), N);
    EXPECT_EQ(rmax[r], global_max);
    for (int64_t n = 0; n < N; ++n) {
      merged_sum[n] += rsum[r][n];
      merged_target[n] += rtarget[r][n];
    }
  }
  std::vector<float> merged_losses(N);
  auto lse = global_max;
  cross_entropy_finish(lse.data(), merged_losses.data(), merged_sum.data(), merged_target.data(),
                       N);
  for (int64_t n = 0; n < N; ++n) {
    EXPECT_NEAR(lse[n], max[n], 1e-5 * (1 + std::abs(max[n]))) << "row " << n;
    EXPECT_NEAR(merged_losses[n], losses[n], 1e-5 * (1 + std::abs(losses[n]))) << "row " << n;
    EXPECT_EQ(merged_target[n], target_logit[n]) << "row " << n;
  }
}

TEST(BiasAddTest, AddsTheBiasToEveryRow) {
  const int64_t N = 3, C = 37;  // not a multiple of any vector width
  const auto out0 = random_vector<double>(N * C, 271, -1.0, 1.0);
  const auto bias = random_vector<double>(C, 272, -1.0, 1.0);
  auto out = out0;
  bias_add(out.data(), bias.data(), N, C);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) EXPECT_EQ(out[n * C + c], out0[n * C + c] + bias[c]);
}

// Zeroed statistics start a fold (sum 0: max unread), however far below 0 the logits lie:
// a maximum taken from the zero would underflow every exponential.
TEST(CrossEntropyFoldTest, ZeroedStatisticsStartAFoldBelowZero) {
  const std::vector<int32_t> targets = {0};
  std::vector<float> max(1, 0.0f), sum(1, 0.0f), target_logit(1, 0.0f);
  const std::vector<float> first = {-200.0f, -201.0f}, second = {-202.0f};
  cross_entropy_fold(max.data(), sum.data(), target_logit.data(), first.data(), targets.data(), 1,
                     2, 0);
  cross_entropy_fold(max.data(), sum.data(), target_logit.data(), second.data(), targets.data(), 1,
                     1, 2);
  std::vector<float> losses(1);
  cross_entropy_finish(max.data(), losses.data(), sum.data(), target_logit.data(), 1);
  const double z = std::log(1.0 + std::exp(-1.0) + std::exp(-2.0));
  EXPECT_NEAR(max[0], -200.0 + z, 1e-4);
  EXPECT_NEAR(losses[0], z, 1e-5);
}

// The loss sum is not an OpenMP reduction: the same bits at any thread count. In double, where
// adding the threads' partials in another order changes the last bits (float losses sum
// exactly in double at this size).
TEST(CrossEntropyFoldTest, FinishSumsTheSameBitsAtAnyThreadCount) {
  const int64_t N = 5000;
  const auto sum = random_vector<double>(N, 261, 1.0, 50.0);
  const auto target_logit = random_vector<double>(N, 262, -3.0, 3.0);
  const auto max = random_vector<double>(N, 263, 0.0, 4.0);
  std::vector<double> sums;
  for (const int threads : {1, 3, 4, 7}) {
    testing::ScopedOmpThreads scoped(threads);
    for (int run = 0; run < 5; ++run) {
      auto lse = max;
      sums.push_back(
          cross_entropy_finish<double>(lse.data(), nullptr, sum.data(), target_logit.data(), N));
    }
  }
  for (const double s : sums) EXPECT_EQ(s, sums.front());
}

}  // namespace
}  // namespace tessera::kernels::cpu
