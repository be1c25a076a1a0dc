// Logging through spdlog with a "[rank r]" prefix. Progress lines go through log_rank0 so a
// many-rank run prints them once; TESSERA_LOG_LEVEL picks the level.
#pragma once

#include <spdlog/spdlog.h>

namespace tessera {

// Installs the rank prefix and the level from TESSERA_LOG_LEVEL. Safe to call again (e.g.
// once the launcher knows the rank).
void init_logging(int rank = 0, int world = 1);
// This process's rank, or the calling thread's when it is a thread rank (set_thread_rank).
int log_rank();
// Thread ranks share one process: each rank thread says which rank it is.
void set_thread_rank(int rank);

template <typename... Args>
void log_rank0(spdlog::format_string_t<Args...> fmt, Args&&... args) {
  if (log_rank() == 0) spdlog::info(fmt, std::forward<Args>(args)...);
}

}  // namespace tessera
