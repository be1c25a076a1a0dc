// Megatron's conjugate operators: the communication at the edges of a tensor-parallel region,
// each a forward and a backward that mirror each other. A column-parallel linear's input is
// replicated over the group and its output split; a row-parallel linear's input is split and
// its output a partial sum. Activations are [rows, C] row-major with rows = tokens, so a
// sequence-parallel rank's tokens are the group rank's contiguous block of rows/t rows.
//
//   copy_to_region (f)          forward identity        backward all-reduce
//   reduce_from_region (g)      forward all-reduce      backward identity
//   gather_sequence (SP's g~)   forward all-gather      backward reduce-scatter
//   reduce_scatter_sequence     forward reduce-scatter  backward all-gather
//
// The identities are no calls at all; each function here is the one that communicates. All
// are asynchronous: wait on the Work before reading the result, so the caller can overlap
// (the input gradient's all-reduce runs while the weight-gradient GEMM computes). Every
// member of the group calls the same operators in the same order.
#pragma once

#include <cstddef>

#include "parallel/comm/process_group.h"

namespace tessera::parallel::tp {

// f backward: the partial input gradients of a column-parallel linear summed over the
// group, in place (count elements).
WorkPtr copy_to_region_backward(ProcessGroup& group, void* grad, size_t count, DType dtype);

// g forward: the partial outputs of a row-parallel linear summed over the group, in place.
WorkPtr reduce_from_region_forward(ProcessGroup& group, void* partial, size_t count, DType dtype);

// Sequence parallelism, before a column-parallel linear. Forward: every rank's block of
// local_count elements (its rows/t tokens) gathered into `full` (t * local_count, rank order).
WorkPtr gather_sequence_forward(ProcessGroup& group, const void* local, void* full,
                                size_t local_count, DType dtype);
// Its backward: the gradient of `full` summed over the group, each rank keeping its block.
WorkPtr gather_sequence_backward(ProcessGroup& group, const void* full_grad, void* local_grad,
                                 size_t local_count, DType dtype);

// Sequence parallelism, after a row-parallel linear. Forward: the partial outputs `full`
// (t * local_count) summed over the group, each rank keeping its block of tokens.
WorkPtr reduce_scatter_sequence_forward(ProcessGroup& group, const void* full, void* local,
                                        size_t local_count, DType dtype);
// Its backward: every rank's block of the gradient gathered into the full gradient.
WorkPtr reduce_scatter_sequence_backward(ProcessGroup& group, const void* local_grad,
                                         void* full_grad, size_t local_count, DType dtype);

}  // namespace tessera::parallel::tp
