// The `thread` backend: N ranks as threads of one process, exchanging data through shared
// memory. Used by the tests and by `tessera train --sim-ranks N`.
//
// Async model: each group has one progress thread per rank; a collective is queued there and
// the returned Work completes when it finishes. A small collective (<= 64 KiB) issued while
// that thread is idle runs on the caller's thread instead and returns completed: the hand-off
// would cost more than the copy. Ranks meet in a shared context per group
// (rendezvous of buffer pointers + a generation-counted barrier) and then each rank does its
// share of the work concurrently: all_reduce reduces this rank's 1/N slice of every peer's
// input and writes it straight into every peer's output (reduce-scatter and all-gather fused
// in one pass over memory, two barriers). No lock is held while data moves.
//
// Failure model: the first failure or timeout on any rank aborts the whole thread world (the
// root group and every group split from it); every pending and later operation then fails
// with CommError carrying the first reason, so no rank waits out more than one timeout.
#pragma once

#include <functional>
#include <vector>

#include "parallel/comm/process_group.h"

namespace tessera::parallel {

// One ProcessGroup per rank, all sharing one world. Element r is rank r; each must be used by
// a single thread (its rank's), as an MPI rank would be.
std::vector<ProcessGroupPtr> make_thread_world(int world_size);

// Runs fn(group) for every rank on its own thread, joins them, and rethrows the first failure
// (by time). A failing rank aborts the world so that its peers' collectives fail promptly.
void spawn_ranks(int world_size, const std::function<void(ProcessGroup&)>& fn);

}  // namespace tessera::parallel
