// Token files (llm.c format) and the DataLoader's order: sequential windows, data-parallel
// interleaving, seeded shuffling, and a clear message for every kind of bad file.
#include "runtime/engine/token_data.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <set>

#include "engine_test_util.h"
#include "runtime/core/error.h"

namespace tessera::engine {
namespace {

using test_util::Contains;
using test_util::message_of;
using test_util::OneLine;
using test_util::read_bytes;
using test_util::ScratchDir;
using test_util::write_bytes;

constexpr size_t kHeaderBytes = kTokenHeaderInts * sizeof(int32_t);

// Tokens whose value is their position, so a batch tells where it came from.
std::vector<uint16_t> iota_tokens(size_t n, uint16_t first = 0) {
  std::vector<uint16_t> t(n);
  std::iota(t.begin(), t.end(), first);
  return t;
}

// A raw llm.c file with any header and body, for the malformed cases.
std::string raw_file(int32_t magic, int32_t version, int32_t count, const std::vector<uint16_t>& body) {
  std::string bytes(kHeaderBytes, '\0');
  int32_t header[kTokenHeaderInts] = {};
  header[0] = magic;
  header[1] = version;
  header[2] = count;
  std::memcpy(bytes.data(), header, kHeaderBytes);
  bytes.append(reinterpret_cast<const char*>(body.data()), body.size() * sizeof(uint16_t));
  return bytes;
}

struct Batch {
  std::vector<int32_t> inputs, targets;
  bool operator==(const Batch& o) const { return inputs == o.inputs && targets == o.targets; }
};

Batch next_batch(DataLoader& loader, int B, int T) {
  Batch b{std::vector<int32_t>(size_t(B) * T), std::vector<int32_t>(size_t(B) * T)};
  loader.next(b.inputs.data(), b.targets.data());
  return b;
}

// The batch the spec promises for window w of a file whose token i has value i.
Batch expected_window(int64_t w, int B, int T) {
  Batch b;
  for (int64_t i = 0; i < int64_t{B} * T; ++i) {
    b.inputs.push_back(static_cast<int32_t>(w * B * T + i));
    b.targets.push_back(static_cast<int32_t>(w * B * T + i + 1));
  }
  return b;
}

// --- the file format ------------------------------------------------------------------------

TEST(TokenFile, RoundTrip) {
  ScratchDir dir;
  const std::string path = dir.file("t.bin");
  std::vector<uint16_t> tokens = {0, 1, 255, 256, 1000, 50303, 65535, 7};
  write_token_file(path, tokens);

  // The bytes are llm.c's layout: 256 int32 header, then the uint16 tokens.
  const std::string bytes = read_bytes(path);
  ASSERT_EQ(bytes.size(), kHeaderBytes + tokens.size() * 2);
  int32_t header[kTokenHeaderInts];
  std::memcpy(header, bytes.data(), kHeaderBytes);
  EXPECT_EQ(header[0], 20240520);
  EXPECT_EQ(header[1], 1);
  EXPECT_EQ(header[2], static_cast<int32_t>(tokens.size()));
  for (int i = 3; i < kTokenHeaderInts; ++i) ASSERT_EQ(header[i], 0) << "header int " << i;
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  TokenFile f(path, 65536);
  EXPECT_EQ(f.path(), path);
  ASSERT_EQ(f.size(), static_cast<int64_t>(tokens.size()));
  EXPECT_TRUE(std::equal(tokens.begin(), tokens.end(), f.tokens()));
}

TEST(TokenFile, EmptyFileRoundTrips) {
  ScratchDir dir;
  const std::string path = dir.file("empty.bin");
  write_token_file(path, {});
  EXPECT_EQ(read_bytes(path).size(), kHeaderBytes);
  TokenFile f(path, 256);
  EXPECT_EQ(f.size(), 0);
}

TEST(TokenFile, RewriteReplacesTheFile) {
  ScratchDir dir;
  const std::string path = dir.file("t.bin");
  write_token_file(path, iota_tokens(100));
  write_token_file(path, {9, 8, 7});
  TokenFile f(path, 256);
  ASSERT_EQ(f.size(), 3);
  EXPECT_EQ(f.tokens()[0], 9);
}

TEST(TokenFileErrors, MissingFile) {
  ScratchDir dir;
  const std::string path = dir.file("missing.bin");
  const std::string m = message_of<InvalidArgument>([&] { TokenFile f(path, 256); });
  EXPECT_TRUE(Contains(m, "cannot open token file '" + path + "'"));
  EXPECT_TRUE(Contains(m, "No such file"));
  EXPECT_TRUE(Contains(m, "tessera prepare"));
  EXPECT_TRUE(OneLine(m));
}

TEST(TokenFileErrors, ShorterThanTheHeader) {
  ScratchDir dir;
  const std::string path = dir.file("short.bin");
  write_bytes(path, raw_file(kTokenFileMagic, 1, 0, {}).substr(0, 100));
  const std::string m = message_of<InvalidArgument>([&] { TokenFile f(path, 256); });
  EXPECT_TRUE(Contains(m, path));
  EXPECT_TRUE(Contains(m, "is 100 bytes, shorter than its 1024-byte header"));
  write_bytes(path, "");
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([&] { TokenFile f(path, 256); }),
                       "is 0 bytes, shorter than its 1024-byte header"));
}

TEST(TokenFileErrors, WrongMagic) {
  ScratchDir dir;
  const std::string path = dir.file("magic.bin");
  write_bytes(path, raw_file(20240521, 1, 4, {1, 2, 3, 4}));
  const std::string m = message_of<InvalidArgument>([&] { TokenFile f(path, 256); });
  EXPECT_TRUE(Contains(m, "has magic 20240521 (expected 20240520)"));
  EXPECT_TRUE(Contains(m, path));
  EXPECT_TRUE(OneLine(m));
}

TEST(TokenFileErrors, WrongVersion) {
  ScratchDir dir;
  const std::string path = dir.file("version.bin");
  write_bytes(path, raw_file(kTokenFileMagic, 2, 4, {1, 2, 3, 4}));
  const std::string m = message_of<InvalidArgument>([&] { TokenFile f(path, 256); });
  EXPECT_TRUE(Contains(m, "has version 2 (expected 1"));
}

TEST(TokenFileErrors, TruncatedBody) {
  ScratchDir dir;
  const std::string path = dir.file("trunc.bin");
  write_bytes(path, raw_file(kTokenFileMagic, 1, 100, iota_tokens(50)));
  const std::string m = message_of<InvalidArgument>([&] { TokenFile f(path, 256); });
  EXPECT_TRUE(Contains(m, "is 1124 bytes but its header promises 100 tokens (1224 bytes)"));
  EXPECT_TRUE(Contains(m, "truncated"));
  EXPECT_TRUE(OneLine(m));
  // A file cut in the middle of a token.
  std::string odd = raw_file(kTokenFileMagic, 1, 3, {1, 2, 3});
  odd.pop_back();
  write_bytes(path, odd);
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([&] { TokenFile f(path, 256); }),
                       "header promises 3 tokens"));
}

TEST(TokenFileErrors, TrailingBytesOrNegativeCount) {
  ScratchDir dir;
  const std::string path = dir.file("long.bin");
  write_bytes(path, raw_file(kTokenFileMagic, 1, 2, {1, 2, 3, 4}));
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([&] { TokenFile f(path, 256); }),
                       "header promises 2 tokens"));
  write_bytes(path, raw_file(kTokenFileMagic, 1, -1, {}));
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([&] { TokenFile f(path, 256); }),
                       "header promises -1 tokens"));
}

TEST(TokenFileErrors, TokenIdAtLeastVocabNamesIdAndPosition) {
  ScratchDir dir;
  const std::string path = dir.file("vocab.bin");
  std::vector<uint16_t> tokens(1000, 3);
  tokens[417] = 65;  // the first one out of range (vocab 65: ids 0..64)
  tokens[900] = 200;
  write_token_file(path, tokens);
  const std::string m = message_of<InvalidArgument>([&] { TokenFile f(path, 65); });
  EXPECT_TRUE(Contains(m, "holds token id 65 at position 417"));
  EXPECT_TRUE(Contains(m, "vocab_size is 65"));
  EXPECT_TRUE(OneLine(m));
  // Exactly vocab - 1 is fine.
  tokens[417] = 64;
  tokens[900] = 64;
  write_token_file(path, tokens);
  EXPECT_NO_THROW({ TokenFile f(path, 65); });
}

// --- the loader: batch size against the data -------------------------------------------------

TEST(DataLoaderErrors, BatchLargerThanTheData) {
  ScratchDir dir;
  const std::string path = dir.file("small.bin");
  write_token_file(path, iota_tokens(16));  // B x T + 1 = 2 x 8 + 1 = 17 > 16
  const std::string m = message_of<InvalidArgument>([&] { DataLoader d({path}, 2, 8, 256); });
  EXPECT_TRUE(Contains(m, "holds 16 tokens, fewer than one batch needs (B x T + 1 = 2 x 8 + 1 = 17)"));
  EXPECT_TRUE(Contains(m, path));
  EXPECT_TRUE(OneLine(m));
  // Exactly B x T + 1 tokens make one window.
  write_token_file(path, iota_tokens(17));
  DataLoader d({path}, 2, 8, 256);
  EXPECT_EQ(d.windows_per_epoch(), 1);
  EXPECT_EQ(d.total_tokens(), 17);
}

TEST(DataLoaderErrors, BadShapeOrRankAndBadFiles) {
  ScratchDir dir;
  const std::string path = dir.file("t.bin");
  write_token_file(path, iota_tokens(100));
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([&] { DataLoader d({path}, 0, 8, 256); }),
                       "batch shape 0x8 must be positive"));
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([&] { DataLoader d({path}, 1, 8, 256, 2, 2); }),
                       "data rank 2 outside world 2"));
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([&] { DataLoader d({path}, 1, 8, 50); }),
                       "token id 50 at position 50"));
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([&] { DataLoader d({}, 1, 8, 256); }),
                       "no token files"));
  EXPECT_TRUE(Contains(
      message_of<InvalidArgument>([&] { DataLoader d({dir.file("none.bin")}, 1, 8, 256); }),
      "cannot open token file"));
}

// --- sequential order -------------------------------------------------------------------------

TEST(DataLoaderOrder, SequentialWindowsShiftTargetsAndWrap) {
  ScratchDir dir;
  const std::string path = dir.file("t.bin");
  const int B = 2, T = 3;  // window 6
  // 27 tokens: windows start at 0, 6, 12, 18 (the last needs tokens 18..24); 25, 26 unused.
  write_token_file(path, iota_tokens(27));
  DataLoader d({path}, B, T, 256);
  EXPECT_EQ(d.windows_per_epoch(), 4);
  EXPECT_EQ(d.total_tokens(), 27);
  const Batch first = next_batch(d, B, T);
  EXPECT_EQ(first.inputs, (std::vector<int32_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(first.targets, (std::vector<int32_t>{1, 2, 3, 4, 5, 6}));
  for (int64_t w = 1; w < 4; ++w) EXPECT_EQ(next_batch(d, B, T), expected_window(w, B, T)) << w;
  // After the last full window the loader starts again at token 0.
  for (int64_t w = 0; w < 4; ++w) EXPECT_EQ(next_batch(d, B, T), expected_window(w, B, T)) << w;
  // reset() goes back to the first window.
  next_batch(d, B, T);
  d.reset();
  EXPECT_EQ(next_batch(d, B, T), expected_window(0, B, T));
}

TEST(DataLoaderOrder, ExactlyFullFileUsesEveryToken) {
  ScratchDir dir;
  const std::string path = dir.file("t.bin");
  write_token_file(path, iota_tokens(4 * 8 + 1));  // 4 windows of 8, plus the last target
  DataLoader d({path}, 2, 4, 256);
  EXPECT_EQ(d.windows_per_epoch(), 4);
  Batch last;
  for (int i = 0; i < 4; ++i) last = next_batch(d, 2, 4);
  EXPECT_EQ(last.targets.back(), 32);
  EXPECT_EQ(next_batch(d, 2, 4), expected_window(0, 2, 4));
}

TEST(DataLoaderOrder, SeveralFilesInGivenOrderWindowsStayInsideAFile) {
  ScratchDir dir;
  const int B = 1, T = 4;
  // File a: tokens 0..10 (11 tokens: windows at 0 and 4; 8..10 not a full window).
  // File b: tokens 100..108 (9 tokens: windows at 100 and 104).
  write_token_file(dir.file("a.bin"), iota_tokens(11, 0));
  write_token_file(dir.file("b.bin"), iota_tokens(9, 100));
  DataLoader d({dir.file("a.bin"), dir.file("b.bin")}, B, T, 256);
  EXPECT_EQ(d.windows_per_epoch(), 4);
  EXPECT_EQ(d.total_tokens(), 20);
  const std::vector<int32_t> starts = {0, 4, 100, 104, 0};
  for (int32_t s : starts) {
    const Batch b = next_batch(d, B, T);
    EXPECT_EQ(b.inputs, (std::vector<int32_t>{s, s + 1, s + 2, s + 3})) << "start " << s;
    EXPECT_EQ(b.targets, (std::vector<int32_t>{s + 1, s + 2, s + 3, s + 4})) << "start " << s;
  }
}

// --- data-parallel ranks ------------------------------------------------------------------------

TEST(DataLoaderRanks, RankRGetsGlobalBatchesRPlusKWorld) {
  ScratchDir dir;
  const std::string path = dir.file("t.bin");
  const int B = 2, T = 4;
  write_token_file(path, iota_tokens(5 * 8 + 1));  // 5 windows
  for (int world : {2, 3}) {
    for (int rank = 0; rank < world; ++rank) {
      DataLoader d({path}, B, T, 256, rank, world);
      for (int k = 0; k < 6; ++k) {
        const int64_t global = rank + int64_t{k} * world;
        EXPECT_EQ(next_batch(d, B, T), expected_window(global % 5, B, T))
            << "world " << world << " rank " << rank << " k " << k;
      }
    }
  }
}

TEST(DataLoaderRanks, TwoRanksTogetherSeeWhatOneRankSees) {
  ScratchDir dir;
  const std::string path = dir.file("t.bin");
  const int B = 3, T = 5;
  std::vector<uint16_t> tokens(7 * 15 + 4);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>((i * 37) % 251);
  write_token_file(path, tokens);
  for (bool shuffle : {false, true}) {
    DataLoader one({path}, B, T, 256, 0, 1, shuffle, 42);
    DataLoader r0({path}, B, T, 256, 0, 2, shuffle, 42);
    DataLoader r1({path}, B, T, 256, 1, 2, shuffle, 42);
    // 10 rounds cover an epoch boundary (7 windows).
    for (int step = 0; step < 10; ++step) {
      EXPECT_EQ(next_batch(r0, B, T), next_batch(one, B, T)) << "shuffle " << shuffle << " step " << step;
      EXPECT_EQ(next_batch(r1, B, T), next_batch(one, B, T)) << "shuffle " << shuffle << " step " << step;
    }
  }
}

// --- shuffling ----------------------------------------------------------------------------------

// The window index of each batch drawn (tokens are positions, so input 0 / (B*T)).
std::vector<int64_t> drawn_windows(DataLoader& d, int B, int T, int n) {
  std::vector<int64_t> out;
  for (int i = 0; i < n; ++i) out.push_back(next_batch(d, B, T).inputs[0] / (B * T));
  return out;
}

TEST(DataLoaderShuffle, DeterministicPerSeedAndAPermutationPerEpoch) {
  ScratchDir dir;
  const std::string path = dir.file("t.bin");
  const int B = 2, T = 4, n = 20;
  write_token_file(path, iota_tokens(n * 8 + 1));
  DataLoader a({path}, B, T, 256, 0, 1, true, 1234);
  DataLoader b({path}, B, T, 256, 0, 1, true, 1234);
  DataLoader c({path}, B, T, 256, 0, 1, true, 999);
  const std::vector<int64_t> wa = drawn_windows(a, B, T, 2 * n);
  EXPECT_EQ(wa, drawn_windows(b, B, T, 2 * n));  // same seed, same order
  const std::vector<int64_t> wc = drawn_windows(c, B, T, 2 * n);
  EXPECT_NE(wa, wc);  // another seed, another order

  std::vector<int64_t> identity(n);
  std::iota(identity.begin(), identity.end(), 0);
  for (const auto* w : {&wa, &wc}) {
    for (int epoch = 0; epoch < 2; ++epoch) {
      std::vector<int64_t> e(w->begin() + epoch * n, w->begin() + (epoch + 1) * n);
      EXPECT_NE(e, identity) << "epoch " << epoch << " is not shuffled";
      std::sort(e.begin(), e.end());
      EXPECT_EQ(e, identity) << "epoch " << epoch << " is not a permutation of the windows";
    }
  }
  // Each epoch draws its own permutation.
  EXPECT_NE(std::vector<int64_t>(wa.begin(), wa.begin() + n), std::vector<int64_t>(wa.begin() + n, wa.end()));

  // Batches are still whole windows with shifted targets.
  DataLoader d({path}, B, T, 256, 0, 1, true, 7);
  for (int i = 0; i < n; ++i) {
    const Batch got = next_batch(d, B, T);
    EXPECT_EQ(got.inputs[0] % (B * T), 0);
    EXPECT_EQ(got, expected_window(got.inputs[0] / (B * T), B, T));
  }
  // reset() replays the same order.
  d.reset();
  DataLoader e({path}, B, T, 256, 0, 1, true, 7);
  EXPECT_EQ(drawn_windows(d, B, T, n), drawn_windows(e, B, T, n));
}

TEST(DataLoaderShuffle, RanksSplitOneEpochPermutation) {
  ScratchDir dir;
  const std::string path = dir.file("t.bin");
  const int B = 1, T = 4, n = 12;
  write_token_file(path, iota_tokens(n * 4 + 1));
  std::vector<int64_t> all;
  for (int rank = 0; rank < 3; ++rank) {
    DataLoader d({path}, B, T, 256, rank, 3, true, 5);
    const std::vector<int64_t> w = drawn_windows(d, B, T, n / 3);
    all.insert(all.end(), w.begin(), w.end());
  }
  std::sort(all.begin(), all.end());
  std::vector<int64_t> identity(n);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_EQ(all, identity);
}

// --- globs --------------------------------------------------------------------------------------

TEST(ExpandPaths, GlobIsSortedAndPlainPathsPassThrough) {
  ScratchDir dir;
  for (const char* name : {"shard_2.bin", "shard_0.bin", "shard_10.bin", "shard_1.bin", "other.bin"}) {
    write_token_file(dir.file(name), iota_tokens(20));
  }
  const std::vector<std::string> got = expand_paths({dir.file("shard_*.bin")});
  EXPECT_EQ(got, (std::vector<std::string>{dir.file("shard_0.bin"), dir.file("shard_1.bin"),
                                           dir.file("shard_10.bin"), dir.file("shard_2.bin")}));
  // A plain path is returned as is, even when it does not exist (opening reports it).
  EXPECT_EQ(expand_paths({dir.file("nope.bin")}), (std::vector<std::string>{dir.file("nope.bin")}));
  // Several patterns keep their order; each is sorted on its own.
  EXPECT_EQ(expand_paths({dir.file("other.bin"), dir.file("shard_?.bin")}),
            (std::vector<std::string>{dir.file("other.bin"), dir.file("shard_0.bin"),
                                      dir.file("shard_1.bin"), dir.file("shard_2.bin")}));
  // The loader reads the expanded files in that order.
  DataLoader d({dir.file("shard_*.bin")}, 1, 4, 256);
  EXPECT_EQ(d.windows_per_epoch(), 4 * 4);
  EXPECT_EQ(d.total_tokens(), 4 * 20);
}

TEST(ExpandPaths, NoMatchIsAnError) {
  ScratchDir dir;
  const std::string pattern = dir.file("missing_*.bin");
  const std::string m = message_of<InvalidArgument>([&] { expand_paths({pattern}); });
  EXPECT_TRUE(Contains(m, "no file matches '" + pattern + "'"));
  EXPECT_TRUE(OneLine(m));
}

}  // namespace
}  // namespace tessera::engine

namespace tessera::engine {
namespace {

// nanoGPT's .bin: raw little-endian uint16 tokens, no header.
void write_raw_tokens(const std::string& path, const std::vector<uint16_t>& tokens) {
  test_util::write_bytes(path, std::string(reinterpret_cast<const char*>(tokens.data()),
                                           tokens.size() * sizeof(uint16_t)));
}

TEST(TokenFileNanoGpt, RawUint16FileReadsWithoutAHeader) {
  test_util::ScratchDir dir;
  const std::vector<uint16_t> tokens = {5, 0, 255, 17, 3};
  write_raw_tokens(dir.file("train.bin"), tokens);
  TokenFile f(dir.file("train.bin"), 256, TokenFormat::NanoGpt);
  ASSERT_EQ(f.size(), 5);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(f.tokens()[i], tokens[i]);
  // The same bytes as an llm.c file: the missing magic is named, with the nanogpt hint.
  try {
    TokenFile wrong(dir.file("train.bin"), 256);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("nanogpt"), std::string::npos) << e.what();
  }
}

TEST(TokenFileNanoGpt, OddByteCountAndBadTokenAreRefused) {
  test_util::ScratchDir dir;
  test_util::write_bytes(dir.file("odd.bin"), std::string("\x01\x00\x02", 3));
  EXPECT_THROW(TokenFile(dir.file("odd.bin"), 256, TokenFormat::NanoGpt), InvalidArgument);
  write_raw_tokens(dir.file("big.bin"), {1, 2, 300});
  EXPECT_THROW(TokenFile(dir.file("big.bin"), 256, TokenFormat::NanoGpt), InvalidArgument);
  EXPECT_THROW(parse_token_format("hdf5"), InvalidArgument);
}

TEST(TokenFileNanoGpt, LoaderBatchesAreTheSameAsFromTheLlmcFile) {
  test_util::ScratchDir dir;
  std::vector<uint16_t> tokens(200);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>((i * 13) % 256);
  write_raw_tokens(dir.file("raw.bin"), tokens);
  write_token_file(dir.file("llmc.bin"), tokens);
  DataLoader raw({dir.file("raw.bin")}, 2, 8, 256, 0, 1, false, 0, TokenFormat::NanoGpt);
  DataLoader llmc({dir.file("llmc.bin")}, 2, 8, 256);
  std::vector<int32_t> a(16), at(16), b(16), bt(16);
  for (int step = 0; step < 20; ++step) {
    raw.next(a.data(), at.data());
    llmc.next(b.data(), bt.data());
    ASSERT_EQ(a, b);
    ASSERT_EQ(at, bt);
  }
}

}  // namespace
}  // namespace tessera::engine
