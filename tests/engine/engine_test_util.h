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
