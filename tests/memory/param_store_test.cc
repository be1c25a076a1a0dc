// The parameters' swap store (NvmeParamStore, offload_param nvme):
// - what sub-group writes put in is what fetch and read give back, for pieces inside the
//   resident part, across its edge, and on disk, at unaligned starts and ends, through several
//   write passes, for 2- and 4-byte elements and several max_in_cpu;
// - the plan's sizes are the store's; a buffer_size below the largest piece, too few buffers,
//   and a fetch with every buffer held are one-line errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "memory/offload/nvme_param_store.h"
#include "runtime/core/error.h"
#include "swap_dir.h"

namespace tessera::memory {
namespace {

namespace fs = std::filesystem;

OffloadParamOptions options(const std::string& dir, int64_t max_in_cpu, int buffers = 3) {
  OffloadParamOptions o;
  o.device = OffloadDevice::Nvme;
  o.nvme_path = dir;
  o.max_in_cpu = max_in_cpu;
  o.buffer_count = buffers;
  o.buffer_size = 20'000;
  return o;
}

offload::AioOptions small_blocks() {
  offload::AioOptions a;
  a.block_size = 16 << 10;
  return a;
}

constexpr int64_t kShard = 50'001;    // not a multiple of 2048
constexpr int64_t kPiece = 9'000;     // the largest fetch
constexpr int64_t kSubGroup = 6'144;  // three alignment units

// Writes every element as sub-groups (value = f(index, pass)) the way the optimizer does.
template <typename T>
void write_pass(NvmeParamStore& store, int pass, std::vector<T>& want) {
  for (int64_t b = 0; b < kShard; b += kSubGroup) {
    const int64_t e = std::min(b + kSubGroup, kShard);
    auto* to = static_cast<T*>(store.write_buffer(b, e));
    for (int64_t i = b; i < e; ++i) {
      want[i] = static_cast<T>((i * 7 + pass * 13) % 65521);
      to[i - b] = want[i];
    }
    store.commit(b, e);
  }
  store.flush();
}

template <typename T>
void round_trips(DType dtype, int64_t max_in_cpu) {
  SwapDir dir;
  NvmeParamStore store(kShard, dtype, kPiece, kSubGroup, options(dir.path, max_in_cpu),
                       small_blocks(), "params");
  EXPECT_TRUE(fs::is_empty(dir.path));  // unlinked at once
  const NvmeParamStore::Sizes plan =
      NvmeParamStore::plan(kShard, dtype, kPiece, kSubGroup, options(dir.path, max_in_cpu));
  EXPECT_EQ(store.memory_bytes(), plan.memory_bytes);
  EXPECT_EQ(store.disk_bytes(), plan.file_bytes);
  EXPECT_EQ(store.resident_elems(), std::min(max_in_cpu / 2048 * 2048, kShard));
  std::vector<T> want(kShard);
  // Pieces: inside the resident part, across its edge, on disk, unaligned both ends, the tail.
  const int64_t R = store.resident_elems();
  const std::vector<std::pair<int64_t, int64_t>> pieces = {
      {0, 1},
      {5, 4101},
      {std::max<int64_t>(R - 100, 0), std::min(R + 3000, kShard)},
      {R, std::min(R + 2048, kShard)},
      {kShard - kPiece, kShard},
      {12'345, 12'345 + kPiece},
      {kShard - 1, kShard},
      {7, 7}};
  for (int pass = 0; pass < 3; ++pass) {
    write_pass(store, pass, want);
    for (const auto& [b, e] : pieces) {
      NvmeParamStore::Fetch f = store.fetch(b, e);
      store.wait(f);
      std::vector<T> got(static_cast<size_t>(e - b));
      if (e > b) std::memcpy(got.data(), f.data, got.size() * sizeof(T));
      EXPECT_EQ(got, std::vector<T>(want.begin() + b, want.begin() + e))
          << "fetch [" << b << ", " << e << ") pass " << pass;
      store.release(f);
      std::vector<T> read(static_cast<size_t>(e - b));
      store.read(b, e, read.data());
      EXPECT_EQ(read, got) << "read [" << b << ", " << e << ")";
    }
  }
  // Reads in flight at once, each in its own buffer.
  std::vector<NvmeParamStore::Fetch> many;
  for (int k = 0; k < 3; ++k) many.push_back(store.fetch(20'000 + k * 5'000, 28'000 + k * 5'000));
  for (int k = 0; k < 3; ++k) {
    store.wait(many[k]);
    EXPECT_EQ(std::memcmp(many[k].data, want.data() + 20'000 + k * 5'000, 8'000 * sizeof(T)), 0);
  }
  if (R <= 20'000) {  // every one of them holds a buffer
    const std::string e = [&] {
      try {
        store.fetch(40'000, 41'000);
      } catch (const Error& err) {
        return std::string(err.what());
      }
      return std::string("(no error)");
    }();
    EXPECT_NE(e.find("raise zero_optimization.offload_param.buffer_count"), std::string::npos) << e;
  }
  for (auto& f : many) store.release(f);
}

TEST(ParamStore, Bf16AllOnDisk) { round_trips<uint16_t>(DType::BF16, 0); }
TEST(ParamStore, Bf16PartInMemory) { round_trips<uint16_t>(DType::BF16, 10'000); }
TEST(ParamStore, F32PartInMemory) { round_trips<float>(DType::F32, 30'000); }
TEST(ParamStore, F32AllInMemory) { round_trips<float>(DType::F32, 1'000'000); }

TEST(ParamStore, SizesAreCheckedUpFront) {
  SwapDir dir;
  OffloadParamOptions o = options(dir.path, 0);
  o.buffer_size = kPiece - 1;
  try {
    NvmeParamStore store(kShard, DType::BF16, kPiece, kSubGroup, o, small_blocks(), "params");
    ADD_FAILURE() << "a buffer below the largest piece was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("raise buffer_size to at least 9000"), std::string::npos)
        << e.what();
  }
  o = options(dir.path, 0, 1);
  EXPECT_THROW(NvmeParamStore::plan(kShard, DType::BF16, kPiece, kSubGroup, o), InvalidArgument);
  EXPECT_THROW(NvmeParamStore(kShard, DType::BF16, kPiece, kSubGroup,
                              options(dir.path + "/missing", 0), small_blocks(), "params"),
               Error);
}

}  // namespace
}  // namespace tessera::memory
