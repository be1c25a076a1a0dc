// Agreement on a local failure. Work that one rank may fail on its own (reading its slice
// of a checkpoint, checking its shard) is followed by collectives every rank must enter; a
// rank that threw would skip them and leave its peers to fail later with an unrelated
// CommError, or not at all. run_agreed ends that step on every rank the same way.
#pragma once

#include <functional>

#include "parallel/comm/process_group.h"

namespace tessera::parallel {

// Collective: runs fn() on this rank, then every rank learns whether any rank's fn threw.
// If none did, returns. Otherwise every rank throws with the message of the lowest failing
// rank: that rank rethrows its own exception, the others an exception of the same kind
// (InvalidArgument, CommError or Error) carrying the same message, so a one-rank problem
// fails the whole group with one line instead of a hang or a cascade of timeouts.
void run_agreed(ProcessGroup& group, const std::function<void()>& fn);

}  // namespace tessera::parallel
