// Helpers shared by the libFuzzer harnesses: the input as a file (the parsers under test
// take paths and mmap or stream them) and splitting one input into several strings.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::fuzz {

// One memfd per process, rewritten for every input: nothing lands on disk, nothing is left
// behind when an input crashes the process, and concurrent harness processes never share it.
// The parsers reopen it through /proc/self/fd, so they see an ordinary path.
inline const std::string& write_input_file(const uint8_t* data, size_t size) {
  static const int fd = ::memfd_create("tessera-fuzz-input", MFD_CLOEXEC);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  if (fd < 0 || ::ftruncate(fd, 0) != 0) {
    std::perror("fuzz: memfd_create/ftruncate");
    std::abort();  // a harness problem, not a finding: stop loudly
  }
  for (size_t done = 0; done < size;) {
    const ssize_t n = ::pwrite(fd, data + done, size - done, static_cast<off_t>(done));
    if (n <= 0) {
      std::perror("fuzz: pwrite");
      std::abort();
    }
    done += static_cast<size_t>(n);
  }
  return path;
}

// Splits at `sep`; n separators give n + 1 parts (empty parts kept, so the fuzzer can reach
// empty strings too).
inline std::vector<std::string> split(std::string_view text, char sep) {
  std::vector<std::string> parts;
  for (size_t start = 0;;) {
    const size_t at = text.find(sep, start);
    parts.emplace_back(text.substr(start, at == std::string_view::npos ? at : at - start));
    if (at == std::string_view::npos) return parts;
    start = at + 1;
  }
}

}  // namespace tessera::fuzz

// A harness's own invariant on a result the parser accepted: abort so libFuzzer records the
// input (a parser that returns a wrong answer is as much a finding as one that crashes).
#define TS_FUZZ_EXPECT(cond, ...)                                                    \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "fuzz: %s:%d: expected %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                             \
      std::fprintf(stderr, "\n");                                                    \
      std::abort();                                                                  \
    }                                                                                \
  } while (0)
