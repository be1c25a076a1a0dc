// Names for the temporary file an atomic write renames into place. Unique per process and
// call, so concurrent writers of the same target (parallel test runs, several ranks) never
// rename each other's half-written file away.
#pragma once

#include <unistd.h>

#include <atomic>
#include <string>

namespace tessera {

inline std::string temp_sibling(const std::string& path) {
  static std::atomic<unsigned> counter{0};
  return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
}

}  // namespace tessera
