#include "runtime/core/error.h"

#include <cstring>

namespace tessera::detail {

std::string where(const char* file, int line) {
  // Keep only the path below the repository root so messages stay one short line.
  const char* roots[] = {"runtime/", "parallel/", "memory/", "models/", "launch/", "tests/", "bench/"};
  const char* best = file;
  for (const char* root : roots) {
    if (const char* p = std::strstr(file, root)) {
      best = p;
      break;
    }
  }
  return fmt::format(" [{}:{}]", best, line);
}

}  // namespace tessera::detail
