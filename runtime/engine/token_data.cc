#include "runtime/engine/token_data.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "runtime/core/error.h"
#include "runtime/core/rng.h"
#include "runtime/core/temp_path.h"

namespace tessera::engine {

TokenFormat parse_token_format(const std::string& name) {
  if (name == "llmc") return TokenFormat::LlmC;
  if (name == "nanogpt") return TokenFormat::NanoGpt;
  TS_THROW(InvalidArgument, "data.format '{}' is unknown: use llmc (256-int32 header, magic {}) "
           "or nanogpt (raw uint16)", name, kTokenFileMagic);
}

TokenFile::TokenFile(const std::string& path, int vocab_size, TokenFormat format) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  TS_CHECK(fd >= 0, "cannot open token file '{}': {} (create it with `tessera prepare`)", path,
           std::strerror(errno));
  struct stat st {};
  ::fstat(fd, &st);
  map_bytes_ = static_cast<size_t>(st.st_size);
  const size_t header_bytes =
      format == TokenFormat::LlmC ? kTokenHeaderInts * sizeof(int32_t) : 0;
  if (map_bytes_ == 0 && format == TokenFormat::NanoGpt) {
    ::close(fd);
    TS_THROW(InvalidArgument, "token file '{}' is empty: no tokens to train on", path);
  }
  if (map_bytes_ < header_bytes || map_bytes_ == 0) {
    ::close(fd);
    TS_THROW(InvalidArgument,
             "token file '{}' is {} bytes, shorter than its {}-byte header: the file is truncated "
             "or not a token file; regenerate it with `tessera prepare` (or, for a raw uint16 "
             ".bin, set data.format to \"nanogpt\")",
             path, map_bytes_, header_bytes);
  }
  map_ = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  TS_CHECK(map_ != MAP_FAILED, "cannot map token file '{}': {}", path, std::strerror(errno));
  auto fail = [&](const std::string& msg) {
    ::munmap(map_, map_bytes_);
    map_ = nullptr;
    throw InvalidArgument(msg);
  };
  if (format == TokenFormat::NanoGpt) {
    if (map_bytes_ % sizeof(uint16_t) != 0) {
      fail(fmt::format("token file '{}' is {} bytes, not a whole number of uint16 tokens: the "
                       "file is truncated or not a nanoGPT .bin",
                       path, map_bytes_));
    }
    count_ = static_cast<int64_t>(map_bytes_ / sizeof(uint16_t));
  } else {
    const auto* header = static_cast<const int32_t*>(map_);
    if (header[0] != kTokenFileMagic) {
      fail(fmt::format("token file '{}' has magic {} (expected {}): not an llm.c token file; "
                       "create it with `tessera prepare`, or set data.format to \"nanogpt\" "
                       "for a raw uint16 .bin",
                       path, header[0], kTokenFileMagic));
    }
    if (header[1] != kTokenFileVersion) {
      fail(fmt::format("token file '{}' has version {} (expected {} = uint16 tokens)", path,
                       header[1], kTokenFileVersion));
    }
    count_ = header[2];
    const size_t expected = header_bytes + static_cast<size_t>(count_) * sizeof(uint16_t);
    if (count_ < 0 || map_bytes_ != expected) {
      fail(fmt::format("token file '{}' is {} bytes but its header promises {} tokens ({} "
                       "bytes): the file is truncated or corrupt; regenerate it with `tessera "
                       "prepare`",
                       path, map_bytes_, count_, expected));
    }
  }
  tokens_ = reinterpret_cast<const uint16_t*>(static_cast<const char*>(map_) + header_bytes);
  madvise(map_, map_bytes_, MADV_WILLNEED);
  uint16_t max_token = 0;
#pragma omp parallel for simd reduction(max : max_token)
  for (int64_t i = 0; i < count_; ++i) max_token = std::max(max_token, tokens_[i]);
  if (count_ > 0 && max_token >= vocab_size) {
    const int64_t at = std::find_if(tokens_, tokens_ + count_,
                                    [&](uint16_t t) { return t >= vocab_size; }) - tokens_;
    fail(fmt::format("token file '{}' holds token id {} at position {}, but the model's "
                     "vocab_size is {}: raise model.vocab_size or re-tokenise the data",
                     path, tokens_[at], at, vocab_size));
  }
}

TokenFile::~TokenFile() {
  if (map_ != nullptr) ::munmap(map_, map_bytes_);
}

void write_token_file(const std::string& path, const std::vector<uint16_t>& tokens) {
  TS_CHECK(tokens.size() <= 0x7fffffffu, "{} tokens do not fit the int32 count of the header",
           tokens.size());
  const std::string tmp = temp_sibling(path);
  FILE* f = std::fopen(tmp.c_str(), "wb");
  TS_CHECK(f != nullptr, "cannot write '{}': {}", tmp, std::strerror(errno));
  int32_t header[kTokenHeaderInts] = {};
  header[0] = kTokenFileMagic;
  header[1] = kTokenFileVersion;
  header[2] = static_cast<int32_t>(tokens.size());
  bool ok = std::fwrite(header, sizeof(header), 1, f) == 1;
  if (!tokens.empty()) ok = ok && std::fwrite(tokens.data(), 2, tokens.size(), f) == tokens.size();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    TS_THROW(Error, "writing token file '{}' failed: {} (disk full?)", path, std::strerror(errno));
  }
}

std::vector<std::string> expand_paths(const std::vector<std::string>& patterns) {
  std::vector<std::string> out;
  for (const std::string& p : patterns) {
    if (p.find_first_of("*?[") == std::string::npos) {
      out.push_back(p);
      continue;
    }
    glob_t g{};
    const int rc = ::glob(p.c_str(), 0, nullptr, &g);
    std::vector<std::string> found;
    if (rc == 0) found.assign(g.gl_pathv, g.gl_pathv + g.gl_pathc);
    globfree(&g);
    TS_CHECK(!found.empty(), "no file matches '{}': check the path or run `tessera prepare`", p);
    std::sort(found.begin(), found.end());
    out.insert(out.end(), found.begin(), found.end());
  }
  return out;
}

DataLoader::DataLoader(const std::vector<std::string>& paths, int B, int T, int vocab_size,
                       int rank, int world, bool shuffle, uint64_t seed, TokenFormat format)
    : B_(B), T_(T), rank_(rank), world_(world), shuffle_(shuffle), seed_(seed) {
  TS_CHECK(B >= 1 && T >= 1, "batch shape {}x{} must be positive", B, T);
  TS_CHECK(world >= 1 && rank >= 0 && rank < world, "data rank {} outside world {}", rank, world);
  const int64_t window = int64_t{B} * T;
  for (const std::string& p : expand_paths(paths)) {
    auto f = std::make_unique<TokenFile>(p, vocab_size, format);
    TS_CHECK(f->size() >= window + 1,
             "token file '{}' holds {} tokens, fewer than one batch needs (B x T + 1 = {} x {} + 1 "
             "= {}): lower train_micro_batch_size_per_gpu or data.seq_len, or use more data",
             p, f->size(), B, T, window + 1);
    // A window needs B*T + 1 tokens (the last target); windows start every B*T tokens.
    file_windows_.push_back((f->size() - 1) / window);
    windows_ += file_windows_.back();
    total_ += f->size();
    files_.push_back(std::move(f));
  }
  TS_CHECK(!files_.empty(), "the data loader was given no token files");
}

DataLoader::~DataLoader() = default;

void DataLoader::reset() { next_global_ = 0; }

void DataLoader::seek(int64_t position) {
  TS_CHECK(position >= 0, "data loader: cannot seek to micro-batch {}", position);
  next_global_ = position;
}

const uint16_t* DataLoader::window_start(int64_t window, int* file) const {
  for (size_t f = 0; f < files_.size(); ++f) {
    if (window < file_windows_[f]) {
      *file = static_cast<int>(f);
      return files_[f]->tokens() + window * int64_t{B_} * T_;
    }
    window -= file_windows_[f];
  }
  TS_THROW(Error, "data window out of range");
}

void DataLoader::fill(int64_t window, int32_t* inputs, int32_t* targets) const {
  int file = 0;
  const uint16_t* start = window_start(window, &file);
  const int64_t n = int64_t{B_} * T_;
  for (int64_t i = 0; i < n; ++i) {
    inputs[i] = start[i];
    targets[i] = start[i + 1];
  }
}

void DataLoader::next(int32_t* inputs, int32_t* targets) {
  const int64_t global = next_global_ * world_ + rank_;
  ++next_global_;
  const int64_t epoch = global / windows_;
  int64_t window = global % windows_;
  if (shuffle_) {
    if (epoch != order_epoch_) {
      order_.resize(windows_);
      for (int64_t i = 0; i < windows_; ++i) order_[i] = i;
      Rng rng(seed_ ^ splitmix64(static_cast<uint64_t>(epoch)));
      for (int64_t i = windows_ - 1; i > 0; --i) {
        std::swap(order_[i], order_[rng.below(static_cast<uint64_t>(i + 1))]);
      }
      order_epoch_ = epoch;
    }
    window = order_[window];
  }
  fill(window, inputs, targets);
}

}  // namespace tessera::engine
