// Token files and the batch loader.
//
// Formats: llm.c's (a header of 256 int32: magic 20240520, version 1, token count, rest 0;
// then the tokens as uint16) and nanoGPT's raw uint16 .bin (no header: the file size gives
// the count). Files are memory-mapped and validated once at open.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tessera::engine {

inline constexpr int32_t kTokenFileMagic = 20240520;
inline constexpr int32_t kTokenFileVersion = 1;
inline constexpr int kTokenHeaderInts = 256;

enum class TokenFormat { LlmC, NanoGpt };
// "llmc" or "nanogpt"; throws InvalidArgument naming both.
TokenFormat parse_token_format(const std::string& name);

class TokenFile {
 public:
  // Maps and checks the file: header (llm.c), size, and every token < vocab_size.
  TokenFile(const std::string& path, int vocab_size, TokenFormat format = TokenFormat::LlmC);
  ~TokenFile();
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  const uint16_t* tokens() const { return tokens_; }
  int64_t size() const { return count_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint16_t* tokens_ = nullptr;
  int64_t count_ = 0;
};

// Writes tokens in the llm.c format (atomically: a temp file renamed into place).
void write_token_file(const std::string& path, const std::vector<uint16_t>& tokens);

// Yields micro-batches of B x T inputs and their next-token targets.
//
// Sequential order (shuffle off): within a file, micro-batch i covers tokens
// [i*B*T, (i+1)*B*T + 1); the files' windows follow one another in path order (a window never
// spans two files), and the order wraps to the first window after the last full one.
// Data-parallel rank r of `world` takes global micro-batches r, r + world, r + 2 world, ...,
// so `world` ranks together read exactly what one rank reads over `world` micro-batches.
// Shuffled order draws a permutation of micro-batch windows per epoch from the seed.
class DataLoader {
 public:
  DataLoader(const std::vector<std::string>& paths, int B, int T, int vocab_size, int rank = 0,
             int world = 1, bool shuffle = false, uint64_t seed = 0,
             TokenFormat format = TokenFormat::LlmC);
  ~DataLoader();

  // Fills inputs and targets, each B*T int32.
  void next(int32_t* inputs, int32_t* targets);
  void reset();
  // Micro-batches this rank has read (its position in the order); seek() continues from one
  // (a resumed run), drawing the same shuffled order from the seed.
  int64_t position() const { return next_global_; }
  void seek(int64_t position);
  int64_t windows_per_epoch() const { return windows_; }
  int64_t total_tokens() const { return total_; }

 private:
  const uint16_t* window_start(int64_t window, int* file) const;
  void fill(int64_t window, int32_t* inputs, int32_t* targets) const;

  std::vector<std::unique_ptr<TokenFile>> files_;
  std::vector<int64_t> file_windows_;  // windows in each file (windows never span two files)
  int B_, T_, rank_, world_;
  bool shuffle_;
  uint64_t seed_;
  int64_t windows_ = 0, total_ = 0;
  int64_t next_global_ = 0;
  std::vector<int64_t> order_;  // current epoch's permutation when shuffling
  int64_t order_epoch_ = -1;
};

// Expands a glob ("data/shard_*.bin") into sorted paths; a plain path is returned as is.
std::vector<std::string> expand_paths(const std::vector<std::string>& patterns);

}  // namespace tessera::engine
