// Helpers shared by the engine tests: a scratch folder per test and checks on exception
// messages (plain std::string::find, so the binary needs no gmock).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "runtime/core/rng.h"
#include "runtime/engine/token_data.h"

namespace tessera::engine::test_util {

// A fresh folder under $TMPDIR, removed when the object goes away.
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "tessera_engine_XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + tmpl);
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// A token file of 20,000 tokens below 256: a period-61 pattern (learnable in a few steps)
// with one token in eight random. It lives in a folder of this process's own, because ctest
// runs tests in parallel processes; `name` keeps callers' files apart.
inline std::string synthetic_token_file(const std::string& name) {
  const auto dir = std::filesystem::path(testing::TempDir()) /
                   ("tessera_engine_tokens_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / name).string();
  Rng rng(11);
  std::vector<uint16_t> tokens(20000);
  for (size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<uint16_t>(rng.below(8) == 0 ? rng.below(256) : (i * 7) % 61);
  }
  write_token_file(path, tokens);
  return path;
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Runs `fn`, which must throw an exception of type E (or derived); returns its message.
// Records a test failure (and returns "") when it throws nothing or something else.
template <typename E, typename Fn>
std::string message_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    if (dynamic_cast<const E*>(&e) == nullptr) {
      ADD_FAILURE() << "threw an exception of another type than expected: " << e.what();
    }
    return e.what();
  }
  ADD_FAILURE() << "expected an exception, none was thrown";
  return "";
}

inline ::testing::AssertionResult Contains(const std::string& text, const std::string& fragment) {
  if (text.find(fragment) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << fragment << "' not found in: " << text;
}

inline ::testing::AssertionResult Lacks(const std::string& text, const std::string& fragment) {
  if (text.find(fragment) == std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << fragment << "' unexpectedly found in: " << text;
}

inline ::testing::AssertionResult OneLine(const std::string& text) {
  if (text.find('\n') == std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "message spans several lines: " << text;
}

}  // namespace tessera::engine::test_util
