// The f32 AdamW update that every CPU optimizer step runs (adamw_update<float>, the 16-bit
// master-weight update, the offloaded sub-groups), on whichever vector unit the CPU has.
//
// Each path does the same IEEE operations on each element in the same order (the fused
// multiply-adds of AdamWStep::update in shared_steps.h, correctly rounded division and square
// root), so every path gives the same bits as the scalar reference on any CPU, and the
// losses do not depend on which machine ran the step. Paths are compiled with per-function
// target attributes and picked from CPUID at run time; large updates are split across the
// OpenMP pool.
#pragma once

#include <cstdint>

#include "runtime/kernels/cpu_kernels.h"

namespace tessera::kernels::cpu {

// The instruction sets the update can run on, weakest first.
enum class AdamPath {
  Scalar,  // AdamWStep::update one element at a time (std::fma)
  Avx2,    // 8 lanes, AVX2 + FMA
  Avx512,  // 16 lanes, AVX-512 F
};

const char* adam_path_name(AdamPath path);
// The strongest path this CPU (and OS) supports; checked once.
AdamPath best_adam_path();
// Whether `path` can run here. Passing one that cannot to adamw_f32 throws InvalidArgument
// rather than dying on an illegal instruction.
bool adam_path_supported(AdamPath path);

// One AdamW step on params[0, n) with grads, m and v, as adamw_update<float>. `path` exists
// for tests and benchmarks; callers leave the default. Called inside an OpenMP parallel
// region it runs on the calling thread only.
void adamw_f32(float* params, const float* grads, float* m, float* v, int64_t n,
               const AdamWParams& p, AdamPath path = best_adam_path());

// The bf16 run's update in one pass: bf16 gradients widened, the fp32 master, m and v
// updated, the master rounded (to nearest even) into the bf16 parameters, on the same paths
// as adamw_f32. The bits of widening, adamw_f32 and rounding in turn, without their passes
// over an intermediate buffer.
void adamw_bf16(float* master, uint16_t* params, const uint16_t* grads, float* m, float* v,
                int64_t n, const AdamWParams& p, AdamPath path = best_adam_path());

}  // namespace tessera::kernels::cpu
