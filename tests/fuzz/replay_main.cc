// Replays fuzz inputs without libFuzzer: the gcc build (and CI) links every harness with this
// main() and runs it over the seed corpus and the regression inputs, so a fixed finding stays
// fixed even where clang's -fsanitize=fuzzer is not available.
//
// Usage: fuzz_<name> PATH...  (a PATH is a file or a directory, read non-recursively)
// Exit status: 0 when every input ran without an exception escaping the harness; a crash or
// abort inside the harness ends the process as it would under libFuzzer.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::vector<std::filesystem::path> inputs_of(const std::filesystem::path& p) {
  if (!std::filesystem::is_directory(p)) return {p};
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(p)) {
    if (e.is_regular_file()) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());  // a stable order makes failures reproducible
  return files;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FILE_OR_DIR...\n", argv[0]);
    return 2;
  }
  int ran = 0, failed = 0;
  for (int a = 1; a < argc; ++a) {
    if (!std::filesystem::exists(argv[a])) {
      std::fprintf(stderr, "%s: no such file or directory\n", argv[a]);
      return 2;
    }
    for (const auto& path : inputs_of(argv[a])) {
      std::ifstream in(path, std::ios::binary);
      const std::vector<char> bytes{std::istreambuf_iterator<char>(in), {}};
      if (!in.good() && !in.eof()) {
        std::fprintf(stderr, "%s: cannot read\n", path.c_str());
        return 2;
      }
      // Printed first, so the last line before a crash names the input.
      std::fprintf(stderr, "running %s (%zu bytes)\n", path.c_str(), bytes.size());
      try {
        LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      } catch (const std::exception& e) {
        std::fprintf(stderr, "FAIL %s: exception escaped the harness: %s\n", path.c_str(),
                     e.what());
        ++failed;
      }
      ++ran;
    }
  }
  std::fprintf(stderr, "%d inputs ran, %d failed\n", ran, failed);
  return failed == 0 && ran > 0 ? 0 : 1;
}
