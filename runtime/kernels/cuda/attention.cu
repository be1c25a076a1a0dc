// Causal multi-head self-attention, flash-attention style: tiles of kTile queries x kTile keys
// in shared memory, an online softmax, and only the log-sum-exp of each query row saved.
//
// Work split. A block has kWarps warps and owns kTile rows (queries in forward and dq, keys
// in dk/dv); each warp owns kRowsPerWarp of them. Inside a warp the lanes take turns in two
// ways: lane j scores the tile's j-th key (or query) against the warp's row, and then lane d
// owns output dimensions d, d+32, ... (at most kDimsPerLane of them, so the accumulators
// are registers). The tile's probabilities move between the two by warp shuffles.
//
// Backward recomputes the probabilities from lse and runs two kernels: one owns query rows
// and writes dq, the other owns key rows and writes dk and dv. Each dqkv element has one
// writer, so there are no atomics and the result is deterministic; the price is computing
// the score tiles twice.
//
// Shared memory rows that lanes read "one row per lane" are padded to hs + 1 floats, so
// those reads fall into distinct banks; rows read by the whole warp at once are not padded.
#include <algorithm>
#include <string>

#include "runtime/kernels/cuda/common.cuh"
#include "runtime/kernels/cuda_kernels.h"

namespace tessera::kernels::cuda {
namespace detail {
namespace {

inline constexpr int kTile = kWarpSize;  // lane <-> key (or query) within a tile
inline constexpr int kWarps = 8;
inline constexpr int kThreads = kWarps * kWarpSize;
inline constexpr int kRowsPerWarp = kTile / kWarps;
inline constexpr int kMaxHeadDim = 128;
inline constexpr int kDimsPerLane = kMaxHeadDim / kWarpSize;
inline constexpr int kDefaultSharedLimit = 48 * 1024;
// Lets ptxas use up to 128 registers a thread: the backward kernels hold two sets of
// per-row accumulators and spill at the default budget.
inline constexpr int kMinBlocksPerSm = 2;

// ---- kernels --------------------------------------------------------------------------------

// Rows [t0, t0 + kTile) of one head's slice (hs columns, row stride ld_src) into dst (row
// stride ld_dst); rows past the sequence end become zeros.
template <typename T>
__device__ void load_tile(float* dst, int ld_dst, const T* src, int64_t ld_src, int t0, int T_,
                          int hs) {
  for (int idx = threadIdx.x; idx < kTile * hs; idx += blockDim.x) {
    const int r = idx / hs;
    const int d = idx % hs;
    const int t = t0 + r;
    dst[r * ld_dst + d] = t < T_ ? load_f(src + int64_t{t} * ld_src + d) : 0.0f;
  }
}

// dout_i . out_i for the warp's rows, which backward needs for every query row.
template <typename T>
__device__ float row_dot_global(const T* a, const T* b, int hs, int lane) {
  float part = 0.0f;
  for (int d = lane; d < hs; d += kWarpSize) part += load_f(a + d) * load_f(b + d);
  return warp_sum(part);
}

// Where a block works: batch blockIdx.z, head blockIdx.y, the tile of rows starting at
// blockIdx.x * kTile, and this thread's warp and lane.
struct BlockPlace {
  int b, h, tile0, warp, lane;
};
__device__ BlockPlace block_place() {
  return {static_cast<int>(blockIdx.z), static_cast<int>(blockIdx.y),
          static_cast<int>(blockIdx.x) * kTile, static_cast<int>(threadIdx.x) / kWarpSize,
          static_cast<int>(threadIdx.x) % kWarpSize};
}

// One (batch, head) pair's slices, for the block's blockIdx.z (batch) and blockIdx.y (head):
// q, k and v rows have stride 3C, out and dout rows stride C, lse holds the T log-sum-exps.
template <typename T>
struct HeadSlices {
  const T* q;
  const T* k;
  const T* v;
  const T* out;
  const T* dout;
  const float* lse;
  int64_t ld_qkv;

  __device__ HeadSlices(const T* qkv, const T* out_all, const T* dout_all, const float* lse_all,
                        int T_, int C, int NH) {
    const int b = blockIdx.z;
    const int h = blockIdx.y;
    const int hs = C / NH;
    ld_qkv = 3 * int64_t{C};
    q = qkv + int64_t{b} * T_ * ld_qkv + int64_t{h} * hs;
    k = q + C;
    v = q + 2 * C;
    const int64_t row0 = int64_t{b} * T_ * C + int64_t{h} * hs;
    out = out_all != nullptr ? out_all + row0 : nullptr;
    dout = dout_all != nullptr ? dout_all + row0 : nullptr;
    lse = lse_all != nullptr ? lse_all + (int64_t{b} * NH + h) * T_ : nullptr;
  }
};

// Keys and values [k0, k0 + kTile) of the block's head into shared memory, once every thread
// is done with the previous tile (and, the first time, has its query tile loaded).
template <typename T>
__device__ void stage_key_tile(float* sk, float* sv, const HeadSlices<T>& head, int k0, int T_,
                               int hs, int ld) {
  __syncthreads();
  load_tile(sk, ld, head.k, head.ld_qkv, k0, T_, hs);
  load_tile(sv, ld, head.v, head.ld_qkv, k0, T_, hs);
  __syncthreads();
}

// dst[d] += factor * acc[k] for the dimensions d = lane + k * 32 this lane owns.
template <typename T>
__device__ void add_row(T* dst, const float (&acc)[kDimsPerLane], float factor, int hs,
                        int lane) {
#pragma unroll
  for (int k = 0; k < kDimsPerLane; ++k) {
    const int d = lane + k * kWarpSize;
    if (d < hs) store_f(dst + d, load_f(dst + d) + factor * acc[k]);
  }
}

// acc += sum over tile rows jj < rows of w_jj * tile[jj], where lane jj holds w_jj: the
// tile-weighted sum (P V in forward, dS K for dq) into the dimensions this lane owns.
__device__ void add_weighted_rows(float (&acc)[kDimsPerLane], float lane_weight,
                                  const float* tile, int ld, int rows, int hs, int lane) {
  for (int jj = 0; jj < rows; ++jj) {
    const float w = __shfl_sync(kFullMask, lane_weight, jj);
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k) {
      const int d = lane + k * kWarpSize;
      if (d < hs) acc[k] += w * tile[jj * ld + d];
    }
  }
}

// grid (query tiles, NH, B).
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    attention_forward_kernel(T* out, float* lse, const T* qkv, int T_, int C, int NH, float scale) {
  extern __shared__ float smem[];
  const int hs = C / NH;
  const int ld = hs + 1;
  float* sq = smem;             // [kTile][hs]: read by the whole warp at once
  float* sk = sq + kTile * hs;  // [kTile][ld]: one key per lane
  float* sv = sk + kTile * ld;  // [kTile][ld]
  const auto [b, h, q0, warp, lane] = block_place();
  const HeadSlices<T> head(qkv, nullptr, nullptr, nullptr, T_, C, NH);

  load_tile(sq, hs, head.q, head.ld_qkv, q0, T_, hs);

  float row_max[kRowsPerWarp];
  float row_sum[kRowsPerWarp];
  float acc[kRowsPerWarp][kDimsPerLane];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    row_max[rr] = -INFINITY;
    row_sum[rr] = 0.0f;
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k) acc[rr][k] = 0.0f;
  }

  // Causal: no query of this tile sees a key at or past q0 + kTile. Every visited key tile
  // starts at or before each row's own position, so each row sees at least one key per tile
  // and the running maximum is finite after the first.
  const int key_end = min(q0 + kTile, T_);
  for (int k0 = 0; k0 < key_end; k0 += kTile) {
    stage_key_tile(sk, sv, head, k0, T_, hs, ld);
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr;
      const int i = q0 + r;
      if (i >= T_) continue;  // the same for the whole warp
      const int j = k0 + lane;
      float s = -INFINITY;
      if (j <= i) {
        float dot = 0.0f;
        for (int d = 0; d < hs; ++d) dot += sq[r * hs + d] * sk[lane * ld + d];
        s = dot * scale;
      }
      const float new_max = fmaxf(row_max[rr], warp_max(s));
      const float p = j <= i ? expf(s - new_max) : 0.0f;
      const float correction = expf(row_max[rr] - new_max);  // 0 on the first tile
      row_sum[rr] = row_sum[rr] * correction + warp_sum(p);
      row_max[rr] = new_max;
#pragma unroll
      for (int k = 0; k < kDimsPerLane; ++k) acc[rr][k] *= correction;
      add_weighted_rows(acc[rr], p, sv, ld, min(kTile, i - k0 + 1), hs, lane);
    }
  }

#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int i = q0 + warp * kRowsPerWarp + rr;
    if (i >= T_) continue;
    const float inv_sum = 1.0f / row_sum[rr];
    T* o = out + (int64_t{b} * T_ + i) * C + int64_t{h} * hs;
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k) {
      const int d = lane + k * kWarpSize;
      if (d < hs) store_f(o + d, acc[rr][k] * inv_sum);
    }
    if (lane == 0) lse[(int64_t{b} * NH + h) * T_ + i] = row_max[rr] + logf(row_sum[rr]);
  }
}

// dq_i += scale * sum_j P_ij (dP_ij - D_i) k_j, with P_ij = exp(s_ij - lse_i),
// dP_ij = dout_i . v_j and D_i = dout_i . out_i. grid (query tiles, NH, B).
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    attention_backward_dq_kernel(T* dqkv, const T* dout, const T* qkv, const T* out,
                                 const float* lse, int T_, int C, int NH, float scale) {
  extern __shared__ float smem[];
  const int hs = C / NH;
  const int ld = hs + 1;
  float* sq = smem;              // [kTile][hs]
  float* sdo = sq + kTile * hs;  // [kTile][hs]
  float* sk = sdo + kTile * hs;  // [kTile][ld]
  float* sv = sk + kTile * ld;   // [kTile][ld]
  const auto [b, h, q0, warp, lane] = block_place();
  const HeadSlices<T> head(qkv, out, dout, lse, T_, C, NH);

  load_tile(sq, hs, head.q, head.ld_qkv, q0, T_, hs);
  load_tile(sdo, hs, head.dout, C, q0, T_, hs);

  float row_lse[kRowsPerWarp];
  float row_delta[kRowsPerWarp];
  float acc[kRowsPerWarp][kDimsPerLane];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int i = q0 + warp * kRowsPerWarp + rr;
    row_lse[rr] = i < T_ ? head.lse[i] : 0.0f;
    row_delta[rr] =
        i < T_ ? row_dot_global(head.dout + int64_t{i} * C, head.out + int64_t{i} * C, hs, lane)
               : 0.0f;
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k) acc[rr][k] = 0.0f;
  }

  const int key_end = min(q0 + kTile, T_);
  for (int k0 = 0; k0 < key_end; k0 += kTile) {
    stage_key_tile(sk, sv, head, k0, T_, hs, ld);
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr;
      const int i = q0 + r;
      if (i >= T_) continue;
      const int j = k0 + lane;
      float ds = 0.0f;
      if (j <= i) {
        float qk = 0.0f;
        float dov = 0.0f;
        for (int d = 0; d < hs; ++d) {
          qk += sq[r * hs + d] * sk[lane * ld + d];
          dov += sdo[r * hs + d] * sv[lane * ld + d];
        }
        const float p = expf(qk * scale - row_lse[rr]);
        ds = p * (dov - row_delta[rr]);
      }
      add_weighted_rows(acc[rr], ds, sk, ld, min(kTile, i - k0 + 1), hs, lane);
    }
  }

#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int i = q0 + warp * kRowsPerWarp + rr;
    if (i >= T_) continue;
    add_row(dqkv + (int64_t{b} * T_ + i) * 3 * int64_t{C} + int64_t{h} * hs, acc[rr], scale, hs,
            lane);
  }
}

// dv_j += sum_i P_ij dout_i; dk_j += scale * sum_i P_ij (dP_ij - D_i) q_i, over the queries
// i >= j. grid (key tiles, NH, B).
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    attention_backward_dkv_kernel(T* dqkv, const T* dout, const T* qkv, const T* out,
                                  const float* lse, int T_, int C, int NH, float scale) {
  extern __shared__ float smem[];
  const int hs = C / NH;
  const int ld = hs + 1;
  float* sk = smem;                // [kTile][hs]: this block's keys
  float* sv = sk + kTile * hs;     // [kTile][hs]
  float* sq = sv + kTile * hs;     // [kTile][ld]: one query per lane
  float* sdo = sq + kTile * ld;    // [kTile][ld]
  float* slse = sdo + kTile * ld;  // [kTile]
  float* sdelta = slse + kTile;    // [kTile]
  const auto [b, h, k0, warp, lane] = block_place();
  const HeadSlices<T> head(qkv, out, dout, lse, T_, C, NH);

  load_tile(sk, hs, head.k, head.ld_qkv, k0, T_, hs);
  load_tile(sv, hs, head.v, head.ld_qkv, k0, T_, hs);

  float dk_acc[kRowsPerWarp][kDimsPerLane];
  float dv_acc[kRowsPerWarp][kDimsPerLane];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k) {
      dk_acc[rr][k] = 0.0f;
      dv_acc[rr][k] = 0.0f;
    }
  }

  // Causal: only queries at or after k0 see any of these keys.
  for (int q_start = k0; q_start < T_; q_start += kTile) {
    __syncthreads();
    load_tile(sq, ld, head.q, head.ld_qkv, q_start, T_, hs);
    load_tile(sdo, ld, head.dout, C, q_start, T_, hs);
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr;
      const int i = q_start + r;
      const float delta =
          i < T_ ? row_dot_global(head.dout + int64_t{i} * C, head.out + int64_t{i} * C, hs, lane)
                 : 0.0f;
      if (lane == 0) {
        sdelta[r] = delta;
        slse[r] = i < T_ ? head.lse[i] : 0.0f;
      }
    }
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr;
      const int j = k0 + r;
      if (j >= T_) continue;  // the same for the whole warp
      const int i = q_start + lane;
      float p = 0.0f;
      float ds = 0.0f;
      if (i >= j && i < T_) {
        float qk = 0.0f;
        float dov = 0.0f;
        for (int d = 0; d < hs; ++d) {
          qk += sq[lane * ld + d] * sk[r * hs + d];
          dov += sdo[lane * ld + d] * sv[r * hs + d];
        }
        p = expf(qk * scale - slse[lane]);
        ds = p * (dov - sdelta[lane]);
      }
      const int first = max(0, j - q_start);
      const int last = min(kTile, T_ - q_start);
      for (int ii = first; ii < last; ++ii) {
        const float p_i = __shfl_sync(kFullMask, p, ii);
        const float ds_i = __shfl_sync(kFullMask, ds, ii);
#pragma unroll
        for (int k = 0; k < kDimsPerLane; ++k) {
          const int d = lane + k * kWarpSize;
          if (d < hs) {
            dv_acc[rr][k] += p_i * sdo[ii * ld + d];
            dk_acc[rr][k] += ds_i * sq[ii * ld + d];
          }
        }
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int j = k0 + warp * kRowsPerWarp + rr;
    if (j >= T_) continue;
    T* dk = dqkv + (int64_t{b} * T_ + j) * 3 * int64_t{C} + C + int64_t{h} * hs;
    add_row(dk, dk_acc[rr], scale, hs, lane);
    add_row(dk + C, dv_acc[rr], 1.0f, hs, lane);
  }
}

// ---- launch helpers -----------------------------------------------------------------------------

void check_shape(int B, int T_, int C, int NH, const char* op) {
  const bool ok = B >= 0 && T_ >= 0 && B <= 65535 && NH > 0 && NH <= 65535 && C > 0 &&
                  C % NH == 0 && C / NH <= kMaxHeadDim;
  TS_CUDA_ARG_CHECK(ok, std::string(op) + ": unsupported shape B=" + std::to_string(B) +
                            " T=" + std::to_string(T_) + " C=" + std::to_string(C) +
                            " NH=" + std::to_string(NH) + " (need C % NH == 0, head size <= " +
                            std::to_string(kMaxHeadDim) + ", B and NH <= 65535)");
}

// Opts a kernel into more than the default 48 KiB of dynamic shared memory when the head size
// needs it (hs = 128 does, in backward); every supported GPU (sm_80+) has that much.
template <typename Kernel>
void allow_shared_bytes(Kernel kernel, size_t bytes) {
  if (bytes > kDefaultSharedLimit) {
    TS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)));
  }
}

dim3 attention_grid(int B, int T_, int NH) {
  return dim3(static_cast<unsigned>((T_ + kTile - 1) / kTile), static_cast<unsigned>(NH),
              static_cast<unsigned>(B));
}

}  // namespace
}  // namespace detail

// ---- launchers --------------------------------------------------------------------------------

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH,
                       Stream stream) {
  using namespace detail;
  check_shape(B, T, C, NH, "cuda::attention_forward");
  if (B == 0 || T == 0) return;
  const int hs = C / NH;
  const float scale = 1.0f / sqrtf(static_cast<float>(hs));
  const size_t shared_bytes = sizeof(float) * (size_t{kTile} * hs + 2 * size_t{kTile} * (hs + 1));
  allow_shared_bytes(attention_forward_kernel<float>, shared_bytes);
  attention_forward_kernel<float>
      <<<attention_grid(B, T, NH), kThreads, shared_bytes, to_cuda(stream)>>>(out, lse, qkv, T, C,
                                                                              NH, scale);
  TS_CUDA_CHECK_LAUNCH("attention_forward_kernel");
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int NH, Stream stream) {
  using namespace detail;
  check_shape(B, T, C, NH, "cuda::attention_backward");
  if (B == 0 || T == 0) return;
  const int hs = C / NH;
  const float scale = 1.0f / sqrtf(static_cast<float>(hs));
  const cudaStream_t s = to_cuda(stream);
  const dim3 grid = attention_grid(B, T, NH);

  const size_t dq_bytes = sizeof(float) * (2 * size_t{kTile} * hs + 2 * size_t{kTile} * (hs + 1));
  allow_shared_bytes(attention_backward_dq_kernel<float>, dq_bytes);
  attention_backward_dq_kernel<float>
      <<<grid, kThreads, dq_bytes, s>>>(dqkv, dout, qkv, out, lse, T, C, NH, scale);
  TS_CUDA_CHECK_LAUNCH("attention_backward_dq_kernel");

  const size_t dkv_bytes = dq_bytes + sizeof(float) * 2 * kTile;
  allow_shared_bytes(attention_backward_dkv_kernel<float>, dkv_bytes);
  attention_backward_dkv_kernel<float>
      <<<grid, kThreads, dkv_bytes, s>>>(dqkv, dout, qkv, out, lse, T, C, NH, scale);
  TS_CUDA_CHECK_LAUNCH("attention_backward_dkv_kernel");
}

}  // namespace tessera::kernels::cuda
