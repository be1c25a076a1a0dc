// A fresh folder for a test's swap files, removed with everything in it afterwards.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <system_error>

namespace tessera::memory {

struct SwapDir {
  SwapDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "tessera_swap_XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp " + tmpl);
    path = tmpl;
  }
  ~SwapDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  SwapDir(const SwapDir&) = delete;
  SwapDir& operator=(const SwapDir&) = delete;
  std::string path;
};

}  // namespace tessera::memory
