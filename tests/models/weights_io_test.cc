// Safetensors and GPT-2 weight I/O: f32 / f16 / bf16 round trips, the Conv1D transposition
// checked element by element, HF name variants (transformer. prefix, mask buffers, a tied
// lm_head), config.json both ways, the float <-> half / bfloat16 conversions, and every
// way a corrupted or mismatched file must be rejected with a message naming the problem.
#include "models/weights_io.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "models/gpt.h"
#include "models/safetensors.h"
#include "runtime/core/error.h"
#include "runtime/core/half.h"

namespace tessera::models {
namespace {

namespace fs = std::filesystem;

// Small enough to be instant, odd enough that a swapped dimension changes the shape:
// C = 8, 3C = 24, 4C = 32, V = 12, T = 6.
GPTConfig tiny_config() { return {2, 2, 8, 12, 6}; }

// Every element distinct and non-zero, so any misplaced element shows.
std::vector<float> distinct_params(const ParamRegistry& registry) {
  std::vector<float> flat(static_cast<size_t>(registry.numel()));
  for (size_t i = 0; i < flat.size(); ++i) {
    flat[i] = static_cast<float>(std::sin(0.37 * static_cast<double>(i) + 0.1) * (1.0 + i % 7));
  }
  return flat;
}

class WeightsIoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::path(::testing::TempDir()) / "tessera_weights_io_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

// Runs `fn`, expects InvalidArgument, and checks its one-line message holds every fragment.
void expect_invalid(const std::function<void()>& fn, const std::vector<std::string>& fragments) {
  try {
    fn();
    ADD_FAILURE() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    for (const std::string& fragment : fragments) {
      EXPECT_NE(what.find(fragment), std::string::npos)
          << "message lacks '" << fragment << "': " << what;
    }
  }
}

// A safetensors file assembled byte by byte: `declared_len` overrides the header length.
void write_raw(const std::string& path, const std::string& header, const std::string& data,
               int64_t declared_len = -1) {
  std::ofstream out(path, std::ios::binary);
  const uint64_t len = declared_len >= 0 ? static_cast<uint64_t>(declared_len) : header.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out << header << data;
}

std::string bytes(size_t n) { return std::string(n, '\x01'); }

// ---------------------------------------------------------------- conversions

TEST(HalfConversionTest, KnownF16Values) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xC000);
  EXPECT_EQ(f32_to_f16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7BFF);  // largest finite half
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7BFF);  // below the midpoint to infinity
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);  // the midpoint ties to even: infinity
  EXPECT_EQ(f32_to_f16(1e6f), 0x7C00);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::infinity()), 0xFC00);
  // Ties to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3C01);
  // Subnormals: 2^-24 is the smallest; 2^-25 ties to even (zero); just above rounds up.
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 ulp ties to even 2
  EXPECT_EQ(f32_to_f16(std::ldexp(1023.0f, -24)), 0x03FF);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(std::nanf("")))));
  EXPECT_EQ(f16_to_f32(0x3555), 0.333251953125f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
}

TEST(HalfConversionTest, EveryF16AndBf16PatternRoundTrips) {
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    const auto bits = static_cast<uint16_t>(b);
    const float h = f16_to_f32(bits);
    if (std::isnan(h)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(h))));
    } else {
      ASSERT_EQ(f32_to_f16(h), bits) << b;
    }
    const float bf = bf16_to_f32(bits);
    if (std::isnan(bf)) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(bf))));
    } else {
      ASSERT_EQ(f32_to_bf16(bf), bits) << b;
    }
  }
}

TEST(HalfConversionTest, KnownBf16Values) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(-1.0f), 0xBF80);
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);  // tie to even
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3F81);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds to inf
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
  // A NaN whose payload lives only in the low bits must not truncate to infinity.
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::bit_cast<float>(0x7F800001u)))));
}

// ---------------------------------------------------------------- safetensors format

TEST_F(WeightsIoTest, WriterLayoutIsAlignedAndReadable) {
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  const std::vector<float> b = {7};
  write_safetensors(
      file("x.safetensors"),
      {{"b", DType::F32, {1}, [&](std::byte* o) { std::memcpy(o, b.data(), 4); }},
       {"a", DType::F16, {2, 3}, [&](std::byte* o) { encode_floats(a.data(), 6, DType::F16, o); }}},
      {{"format", "pt"}});
  std::ifstream in(file("x.safetensors"), std::ios::binary);
  uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 8);
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ(fs::file_size(file("x.safetensors")), 8 + header_len + 4 + 12);

  const SafetensorsFile f(file("x.safetensors"));
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.tensors()[0].name, "b");  // the given order, not alphabetical
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const SafetensorsTensor* t = f.find("a");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::F16);
  EXPECT_EQ(t->shape, (Shape{2, 3}));
  EXPECT_EQ(t->begin, 4);
  std::vector<float> back(6);
  decode_floats(t->data, 6, t->dtype, back.data());
  EXPECT_EQ(back, a);
  EXPECT_EQ(f.find("missing"), nullptr);
}

TEST_F(WeightsIoTest, RejectsFileShorterThanHeaderLength) {
  std::ofstream(file("short")) << "abc";
  expect_invalid([&] { SafetensorsFile f(file("short")); },
                 {file("short"), "shorter than the 8-byte header length", "truncated"});
}

TEST_F(WeightsIoTest, RejectsTruncatedData) {
  // A valid header whose tensor needs 16 bytes, with only 10 present.
  write_raw(file("trunc"), R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", bytes(10));
  expect_invalid([&] { SafetensorsFile f(file("trunc")); },
                 {file("trunc"), "'w'", "out of bounds", "truncated"});
}

TEST_F(WeightsIoTest, RejectsHeaderLengthBeyondFile) {
  write_raw(file("len"), R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", bytes(4),
            4096);
  expect_invalid([&] { SafetensorsFile f(file("len")); },
                 {file("len"), "header length 4096 runs past the end"});
  write_raw(file("huge"), "{}", "", int64_t{1} << 40);
  expect_invalid([&] { SafetensorsFile f(file("huge")); }, {"not plausible"});
}

TEST_F(WeightsIoTest, RejectsHeaderThatIsNotJson) {
  write_raw(file("nojson"), "{\"w\": [oops", bytes(4));
  expect_invalid([&] { SafetensorsFile f(file("nojson")); }, {file("nojson"), "not valid JSON"});
  write_raw(file("array"), "[1, 2]  ", "");
  expect_invalid([&] { SafetensorsFile f(file("array")); }, {"must be an object"});
}

TEST_F(WeightsIoTest, RejectsOverlappingOffsets) {
  write_raw(file("overlap"),
            R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            bytes(12));
  expect_invalid([&] { SafetensorsFile f(file("overlap")); },
                 {file("overlap"), "'b'", "overlap tensor 'a'"});
}

TEST_F(WeightsIoTest, RejectsGapInOffsets) {
  write_raw(file("gap"),
            R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
            bytes(16));
  expect_invalid([&] { SafetensorsFile f(file("gap")); },
                 {file("gap"), "gap of 4 bytes before tensor 'b'"});
  write_raw(file("lead"), R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", bytes(8));
  expect_invalid([&] { SafetensorsFile f(file("lead")); }, {"gap of 4 bytes before tensor 'a'"});
  write_raw(file("tail"), R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", bytes(8));
  expect_invalid([&] { SafetensorsFile f(file("tail")); }, {"4 trailing bytes"});
}

TEST_F(WeightsIoTest, RejectsOffsetsOutOfBounds) {
  write_raw(file("oob"),
            R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
            bytes(12));
  expect_invalid([&] { SafetensorsFile f(file("oob")); },
                 {file("oob"), "'b'", "[8, 16]", "out of bounds of the 12-byte data section"});
  write_raw(file("backwards"), R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})",
            bytes(4));
  expect_invalid([&] { SafetensorsFile f(file("backwards")); }, {"end before they begin"});
  write_raw(file("negative"), R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})",
            bytes(4));
  expect_invalid([&] { SafetensorsFile f(file("negative")); }, {"non-negative"});
}

TEST_F(WeightsIoTest, RejectsSizeThatDoesNotMatchShape) {
  write_raw(file("size"), R"({"a":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}})", bytes(8));
  expect_invalid([&] { SafetensorsFile f(file("size")); },
                 {file("size"), "'a'", "spans 8 bytes", "needs 6"});
  write_raw(file("overflow"),
            R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})",
            bytes(4));
  expect_invalid([&] { SafetensorsFile f(file("overflow")); }, {"too large"});
}

TEST_F(WeightsIoTest, RejectsUnknownDtype) {
  write_raw(file("dtype"), R"({"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", bytes(8));
  expect_invalid([&] { SafetensorsFile f(file("dtype")); },
                 {file("dtype"), "tensor 'ids' has dtype I64", "only F32, F16 and BF16"});
}

TEST_F(WeightsIoTest, RejectsMalformedEntries) {
  write_raw(file("dup"),
            R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
            R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
            bytes(8));
  expect_invalid([&] { SafetensorsFile f(file("dup")); }, {"tensor 'a' appears twice"});
  write_raw(file("noshape"), R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", bytes(4));
  expect_invalid([&] { SafetensorsFile f(file("noshape")); },
                 {"'a' lacks dtype, shape or data_offsets"});
  write_raw(file("extra"), R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})",
            bytes(4));
  expect_invalid([&] { SafetensorsFile f(file("extra")); }, {"unknown field 'x'"});
  write_raw(file("floatdim"), R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})",
            bytes(4));
  expect_invalid([&] { SafetensorsFile f(file("floatdim")); }, {"shape entry 1.5"});
  write_raw(file("meta"), R"({"__metadata__":{"k":1}})", "");
  expect_invalid([&] { SafetensorsFile f(file("meta")); }, {"__metadata__ key 'k'"});
  expect_invalid([&] { SafetensorsFile f(file("does_not_exist")); }, {"cannot open"});
}

TEST_F(WeightsIoTest, AcceptsEmptyFileAndZeroSizedTensors) {
  write_raw(file("empty"), "{}      ", "");
  EXPECT_TRUE(SafetensorsFile(file("empty")).tensors().empty());
  write_raw(file("zero"),
            R"({"z":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},)"
            R"("a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})",
            bytes(4));
  EXPECT_EQ(SafetensorsFile(file("zero")).tensors().size(), 2u);
}

// ---------------------------------------------------------------- GPT weights

TEST_F(WeightsIoTest, RoundTripF32IsExact) {
  const GPTConfig cfg = tiny_config();
  const ParamRegistry reg = build_gpt_registry(cfg);
  const std::vector<float> flat = distinct_params(reg);
  save_gpt_safetensors(file("model.safetensors"), cfg, reg, flat.data());
  std::vector<float> back(flat.size(), -1.0f);
  load_gpt_safetensors(file("model.safetensors"), cfg, reg, back.data());
  EXPECT_EQ(std::memcmp(back.data(), flat.data(), flat.size() * sizeof(float)), 0);
  EXPECT_FALSE(fs::exists(file("model.safetensors.tmp")));
}

TEST_F(WeightsIoTest, RoundTripF16AndBf16RoundToNearestEven) {
  // The second config's word embedding (170,000 x 8) is encoded in several pieces.
  for (const GPTConfig& cfg : {tiny_config(), GPTConfig{1, 2, 8, 170'000, 6}}) {
    for (DType dtype : {DType::F16, DType::BF16}) {
      SCOPED_TRACE(fmt::format("{} vocab {}", dtype_name(dtype), cfg.vocab_size));
      const ParamRegistry reg = build_gpt_registry(cfg);
      const std::vector<float> flat = distinct_params(reg);
      save_gpt_safetensors(file("model.safetensors"), cfg, reg, flat.data(), dtype);
      const SafetensorsFile f(file("model.safetensors"));
      EXPECT_EQ(f.find("wte.weight")->dtype, dtype);
      std::vector<float> back(flat.size());
      load_gpt_safetensors(file("model.safetensors"), cfg, reg, back.data());
      // Half keeps 11 significant bits, bfloat16 8: rounding to nearest is off by at most half
      // a unit in the last place.
      const double rel = dtype == DType::F16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
      for (size_t i = 0; i < flat.size(); ++i) {
        const float expected = dtype == DType::F16 ? f16_to_f32(f32_to_f16(flat[i]))
                                                   : bf16_to_f32(f32_to_bf16(flat[i]));
        ASSERT_EQ(back[i], expected) << i;
        ASSERT_LE(std::abs(back[i] - flat[i]), rel * std::abs(flat[i]) + 1e-7) << i;
      }
    }
  }
}

TEST_F(WeightsIoTest, Conv1dWeightsAreStoredInByOut) {
  const GPTConfig cfg = tiny_config();
  const int64_t C = cfg.n_embd;
  const ParamRegistry reg = build_gpt_registry(cfg);
  std::vector<float> flat = distinct_params(reg);
  // tessera's c_attn is [3C, C] = [out, in]; its row C + 2 is the third K output (K rows
  // follow the C Q rows). In HF's [in, out] it must sit at column C + 2.
  const ParamSpec& qkv = reg.find("h.1.attn.c_attn.weight");
  const int64_t out_row = C + 2, in_col = 5;
  flat[qkv.offset + out_row * C + in_col] = 42.0f;
  const ParamSpec& fc = reg.find("h.0.mlp.c_fc.weight");  // [4C, C]
  flat[fc.offset + 30 * C + 1] = -7.0f;
  const ParamSpec& wte = reg.find("wte.weight");  // [V, C], not transposed
  flat[wte.offset + 11 * C + 3] = 5.0f;
  save_gpt_safetensors(file("model.safetensors"), cfg, reg, flat.data());

  const SafetensorsFile f(file("model.safetensors"));
  auto element = [&](const std::string& name, int64_t r, int64_t c) {
    const SafetensorsTensor* t = f.find(name);
    float v;
    std::memcpy(&v, t->data + (r * t->shape[1] + c) * 4, 4);
    return v;
  };
  EXPECT_EQ(f.find("h.1.attn.c_attn.weight")->shape, (Shape{C, 3 * C}));
  EXPECT_EQ(element("h.1.attn.c_attn.weight", in_col, out_row), 42.0f);
  EXPECT_EQ(f.find("h.0.mlp.c_fc.weight")->shape, (Shape{C, 4 * C}));
  EXPECT_EQ(element("h.0.mlp.c_fc.weight", 1, 30), -7.0f);
  EXPECT_EQ(f.find("h.0.mlp.c_proj.weight")->shape, (Shape{4 * C, C}));
  EXPECT_EQ(f.find("h.0.attn.c_proj.weight")->shape, (Shape{C, C}));
  EXPECT_EQ(f.find("wte.weight")->shape, (Shape{cfg.vocab_size, C}));
  EXPECT_EQ(element("wte.weight", 11, 3), 5.0f);
  EXPECT_EQ(f.find("h.0.attn.c_attn.bias")->shape, (Shape{3 * C}));
  EXPECT_EQ(f.find("lm_head.weight"), nullptr);  // tied
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.tensors().size(), reg.params().size());
  // The square c_proj must be transposed too, even though its shape cannot tell.
  const ParamSpec& proj = reg.find("h.0.attn.c_proj.weight");
  EXPECT_EQ(element("h.0.attn.c_proj.weight", 1, 2), flat[proj.offset + 2 * C + 1]);
}

// Rewrites the tensors of `src` under new names (nullopt drops one), adding `extra` ones.
void rewrite(const std::string& src, const std::string& dst,
             const std::function<std::optional<std::string>(const std::string&)>& rename,
             std::vector<SafetensorsEntry> extra = {}) {
  const SafetensorsFile in(src);
  std::vector<SafetensorsEntry> entries;
  for (const SafetensorsTensor& t : in.tensors()) {
    const std::optional<std::string> name = rename(t.name);
    if (!name) continue;
    const SafetensorsTensor* tp = &t;
    entries.push_back(
        {*name, t.dtype, t.shape, [tp](std::byte* o) { std::memcpy(o, tp->data, tp->nbytes()); }});
  }
  for (SafetensorsEntry& e : extra) entries.push_back(std::move(e));
  write_safetensors(dst, entries, in.metadata());
}

TEST_F(WeightsIoTest, AcceptsHfNameVariants) {
  const GPTConfig cfg = tiny_config();
  const ParamRegistry reg = build_gpt_registry(cfg);
  const std::vector<float> flat = distinct_params(reg);
  save_gpt_safetensors(file("model.safetensors"), cfg, reg, flat.data());
  const ParamSpec& wte = reg.find("wte.weight");
  const std::vector<float> mask(static_cast<size_t>(cfg.block_size * cfg.block_size), 1.0f);
  auto mask_entry = [&](const std::string& name) {
    return SafetensorsEntry{
        name, DType::F32, {1, 1, cfg.block_size, cfg.block_size}, [&](std::byte* o) {
          std::memcpy(o, mask.data(), mask.size() * 4);
        }};
  };
  // As HF's own GPT2LMHeadModel.save_pretrained used to write it: transformer. prefix, the
  // causal-mask buffers, and the tied head.
  rewrite(file("model.safetensors"), file("hf.safetensors"),
          [](const std::string& n) { return "transformer." + n; },
          {mask_entry("transformer.h.0.attn.bias"),
           mask_entry("transformer.h.1.attn.masked_bias"),
           {"lm_head.weight", DType::F32, wte.shape,
            [&](std::byte* o) { std::memcpy(o, flat.data() + wte.offset, wte.numel() * 4); }}});
  std::vector<float> back(flat.size());
  load_gpt_safetensors(file("hf.safetensors"), cfg, reg, back.data());
  EXPECT_EQ(back, flat);

  // An untied head cannot be represented: refuse instead of silently dropping it.
  rewrite(file("model.safetensors"), file("untied.safetensors"),
          [](const std::string& n) { return n; },
          {{"lm_head.weight", DType::F32, wte.shape,
            [&](std::byte* o) { std::memset(o, 0, wte.numel() * 4); }}});
  expect_invalid([&] { load_gpt_safetensors(file("untied.safetensors"), cfg, reg, back.data()); },
                 {"'lm_head.weight' differs from wte.weight", "ties"});

  // The same tensor with and without the prefix is ambiguous.
  rewrite(file("model.safetensors"), file("both.safetensors"),
          [](const std::string& n) { return n; },
          {{"transformer.ln_f.bias", DType::F32, {cfg.n_embd}, [&](std::byte* o) {
              std::memset(o, 0, cfg.n_embd * 4);
            }}});
  expect_invalid([&] { load_gpt_safetensors(file("both.safetensors"), cfg, reg, back.data()); },
                 {"'ln_f.bias' appears both as"});
}

TEST_F(WeightsIoTest, RejectsWrongShapeNamingBothAndTheCause) {
  const GPTConfig file_cfg = tiny_config();
  const ParamRegistry file_reg = build_gpt_registry(file_cfg);
  const std::vector<float> flat = distinct_params(file_reg);
  save_gpt_safetensors(file("model.safetensors"), file_cfg, file_reg, flat.data());

  GPTConfig wider = file_cfg;
  wider.n_embd = 16;
  const ParamRegistry wider_reg = build_gpt_registry(wider);
  std::vector<float> back(static_cast<size_t>(wider_reg.numel()), 3.0f);
  expect_invalid(
      [&] { load_gpt_safetensors(file("model.safetensors"), wider, wider_reg, back.data()); },
      {file("model.safetensors"),
       "tensor 'wte.weight' has shape [12, 8] but the config needs [12, 16]",
       "n_embd 8 (file) vs 16 (config)"});
  // Rejected before anything was written.
  for (float v : back) ASSERT_EQ(v, 3.0f);

  GPTConfig padded = file_cfg;
  padded.vocab_size = 16;
  const ParamRegistry padded_reg = build_gpt_registry(padded);
  back.assign(static_cast<size_t>(padded_reg.numel()), 0.0f);
  expect_invalid(
      [&] { load_gpt_safetensors(file("model.safetensors"), padded, padded_reg, back.data()); },
      {"'wte.weight'", "vocab_size 12 (file) vs 16 (config)",
       "set model.vocab_size to the checkpoint's 12"});
}

TEST_F(WeightsIoTest, RejectsLinearLayoutWithTransposeHint) {
  const GPTConfig cfg = tiny_config();
  const ParamRegistry reg = build_gpt_registry(cfg);
  const std::vector<float> flat = distinct_params(reg);
  // Write h.0.mlp.c_fc.weight in tessera's own [out, in] layout, as an nn.Linear export would.
  std::vector<SafetensorsEntry> entries;
  for (const ParamSpec& spec : reg.params()) {
    Shape shape = spec.shape;
    const bool conv = spec.name.find("c_attn.weight") != std::string::npos ||
                      spec.name.find("c_proj.weight") != std::string::npos ||
                      spec.name.find("c_fc.weight") != std::string::npos;
    if (conv && spec.name != "h.0.mlp.c_fc.weight") shape = {spec.shape[1], spec.shape[0]};
    const float* src = flat.data() + spec.offset;
    const int64_t n = spec.numel();
    entries.push_back(
        {spec.name, DType::F32, shape, [src, n](std::byte* o) { std::memcpy(o, src, n * 4); }});
  }
  write_safetensors(file("linear.safetensors"), entries);
  std::vector<float> back(flat.size());
  expect_invalid([&] { load_gpt_safetensors(file("linear.safetensors"), cfg, reg, back.data()); },
                 {"'h.0.mlp.c_fc.weight' has shape [32, 8] but the config needs [8, 32]",
                  "transpose of Hugging Face's Conv1D layout"});
}

TEST_F(WeightsIoTest, RejectsMissingAndUnexpectedTensors) {
  const GPTConfig cfg = tiny_config();
  const ParamRegistry reg = build_gpt_registry(cfg);
  const std::vector<float> flat = distinct_params(reg);
  save_gpt_safetensors(file("model.safetensors"), cfg, reg, flat.data());

  // A deeper config than the file: block 2 is missing.
  GPTConfig deeper = cfg;
  deeper.n_layer = 3;
  const ParamRegistry deeper_reg = build_gpt_registry(deeper);
  std::vector<float> back(static_cast<size_t>(deeper_reg.numel()));
  expect_invalid(
      [&] { load_gpt_safetensors(file("model.safetensors"), deeper, deeper_reg, back.data()); },
      {"missing tensor 'h.2.ln_1.weight'", "n_layer 2 (file) vs 3 (config)"});

  // One tensor dropped from an otherwise matching file.
  rewrite(file("model.safetensors"), file("dropped.safetensors"),
          [](const std::string& n) -> std::optional<std::string> {
            if (n == "h.1.mlp.c_proj.bias") return std::nullopt;
            return n;
          });
  back.assign(flat.size(), 0.0f);
  expect_invalid(
      [&] { load_gpt_safetensors(file("dropped.safetensors"), cfg, reg, back.data()); },
      {file("dropped.safetensors"), "missing tensor 'h.1.mlp.c_proj.bias' (expected shape [8])"});

  // A shallower config than the file: block 1 is unexpected.
  GPTConfig shallower = cfg;
  shallower.n_layer = 1;
  const ParamRegistry shallow_reg = build_gpt_registry(shallower);
  back.assign(static_cast<size_t>(shallow_reg.numel()), 0.0f);
  expect_invalid(
      [&] { load_gpt_safetensors(file("model.safetensors"), shallower, shallow_reg, back.data()); },
      {"unexpected tensor 'h.1.", "n_layer 2 (file) vs 1 (config)"});

  // A stray tensor is an error too, not silently ignored.
  rewrite(
      file("model.safetensors"), file("stray.safetensors"), [](const std::string& n) { return n; },
      {{"h.0.attn.rotary.weight", DType::F32, {2}, [](std::byte* o) { std::memset(o, 0, 8); }}});
  back.assign(flat.size(), 0.0f);
  expect_invalid([&] { load_gpt_safetensors(file("stray.safetensors"), cfg, reg, back.data()); },
                 {"unexpected tensor 'h.0.attn.rotary.weight'"});
}

TEST_F(WeightsIoTest, RejectsCorruptCheckpointThroughLoad) {
  const GPTConfig cfg = tiny_config();
  const ParamRegistry reg = build_gpt_registry(cfg);
  const std::vector<float> flat = distinct_params(reg);
  save_gpt_safetensors(file("model.safetensors"), cfg, reg, flat.data());
  // Cut the file short: the last tensor's data now runs out of the file.
  fs::resize_file(file("model.safetensors"), fs::file_size(file("model.safetensors")) - 6);
  std::vector<float> back(flat.size());
  expect_invalid([&] { load_gpt_safetensors(file("model.safetensors"), cfg, reg, back.data()); },
                 {file("model.safetensors"), "'ln_f.bias'", "out of bounds", "truncated"});
}

TEST_F(WeightsIoTest, RejectsRegistryThatDoesNotMatchConfig) {
  const GPTConfig cfg = tiny_config();
  GPTConfig other = cfg;
  other.n_layer = 1;
  const ParamRegistry reg = build_gpt_registry(other);
  std::vector<float> flat(static_cast<size_t>(reg.numel()));
  expect_invalid([&] { save_gpt_safetensors(file("m.safetensors"), cfg, reg, flat.data()); },
                 {"registry does not match the config"});
  expect_invalid(
      [&] { save_gpt_safetensors(file("m.safetensors"), other, reg, flat.data(), DType::F64); },
      {"dtype f64 is not supported"});
}

// ---------------------------------------------------------------- config.json

TEST_F(WeightsIoTest, ConfigJsonRoundTripsAndCarriesHfFields) {
  const GPTConfig cfg = tiny_config();
  const ParamRegistry reg = build_gpt_registry(cfg);
  const std::vector<float> flat = distinct_params(reg);
  save_gpt_safetensors(file("model.safetensors"), cfg, reg, flat.data(), DType::BF16);
  const GPTConfig back = read_hf_config(file("config.json"));
  EXPECT_EQ(back.n_layer, cfg.n_layer);
  EXPECT_EQ(back.n_head, cfg.n_head);
  EXPECT_EQ(back.n_embd, cfg.n_embd);
  EXPECT_EQ(back.vocab_size, cfg.vocab_size);
  EXPECT_EQ(back.block_size, cfg.block_size);
  std::ifstream in(file("config.json"));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* fragment :
       {R"("model_type": "gpt2")", R"("GPT2LMHeadModel")", R"("activation_function": "gelu_new")",
        R"("tie_word_embeddings": true)", R"("n_positions": 6)", R"("n_ctx": 6)",
        R"("torch_dtype": "bfloat16")", R"("resid_pdrop": 0.0)"}) {
    EXPECT_NE(text.find(fragment), std::string::npos) << fragment << " not in " << text;
  }
}

TEST_F(WeightsIoTest, ReadsHfConfigAndRejectsUnsupportedSettings) {
  // The shape of the openai-community/gpt2 config.json.
  std::ofstream(file("gpt2.json")) << R"({"activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1, "bos_token_id": 50256,
    "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768,
    "n_head": 12, "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1,
    "summary_activation": null, "vocab_size": 50257})";
  const GPTConfig c = read_hf_config(file("gpt2.json"));
  EXPECT_EQ(c.n_layer, 12);
  EXPECT_EQ(c.n_head, 12);
  EXPECT_EQ(c.n_embd, 768);
  EXPECT_EQ(c.vocab_size, 50257);
  EXPECT_EQ(c.block_size, 1024);

  auto bad = [&](const std::string& json, const std::string& fragment) {
    std::ofstream(file("bad.json")) << json;
    expect_invalid([&] { read_hf_config(file("bad.json")); }, {file("bad.json"), fragment});
  };
  const std::string dims =
      R"("n_layer": 2, "n_head": 2, "n_embd": 8, "vocab_size": 12, "n_positions": 6)";
  bad("{" + dims + R"(, "activation_function": "relu"})", "activation_function \"relu\"");
  bad("{" + dims + R"(, "layer_norm_epsilon": 1e-6})", "layer_norm_epsilon");
  bad("{" + dims + R"(, "tie_word_embeddings": false})", "tie_word_embeddings");
  bad("{" + dims + R"(, "n_inner": 64})", "n_inner 64");
  bad("{" + dims + R"(, "model_type": "llama"})", "model_type is \"llama\"");
  bad(R"({"n_layer": 2, "n_head": 2, "n_embd": 8, "n_positions": 6})", "missing vocab_size");
  bad(R"({"n_layer": 2, "n_head": 3, "n_embd": 8, "vocab_size": 12, "n_positions": 6})", "n_head");
  bad("not json", "not valid JSON");
}

// ---------------------------------------------------------------- loading a slice

// Cuts through every kind of parameter: Conv1D weights mid-row and mid-column, embeddings,
// biases; the shards of 2-7 ZeRO ranks; one element; empty; the whole model.
std::vector<std::pair<int64_t, int64_t>> slices(const ParamRegistry& reg) {
  const int64_t n = reg.numel();
  std::vector<std::pair<int64_t, int64_t>> out = {{0, n}, {0, 1}, {n - 1, n}, {7, 7}};
  for (const char* name : {"h.0.attn.c_attn.weight", "h.1.mlp.c_proj.weight", "wpe.weight"}) {
    const ParamSpec& p = reg.find(name);
    const int64_t cols = p.shape.back();
    out.push_back({p.offset + 3, p.offset + 5});                    // inside one row
    out.push_back({p.offset + cols - 2, p.offset + 2 * cols + 1});  // across rows
    out.push_back({p.offset + 1, p.offset + p.numel() - 1});        // all but the ends
    out.push_back({p.offset - 3, p.offset + p.numel() + 3});        // into both neighbours
  }
  for (int world = 2; world <= 7; ++world) {
    const int64_t per = (n + world - 1) / world;
    for (int r = 0; r < world; ++r)
      out.push_back({std::min(n, r * per), std::min(n, (r + 1) * per)});
  }
  return out;
}

TEST_F(WeightsIoTest, RangeLoadsAreSlicesOfTheFullLoad) {
  const GPTConfig cfg = tiny_config();
  const ParamRegistry reg = build_gpt_registry(cfg);
  const std::vector<float> flat = distinct_params(reg);
  const ParamSpec& wte = reg.find("wte.weight");
  save_gpt_safetensors(file("f32.safetensors"), cfg, reg, flat.data());
  save_gpt_safetensors(file("f16.safetensors"), cfg, reg, flat.data(), DType::F16);
  save_gpt_safetensors(file("bf16.safetensors"), cfg, reg, flat.data(), DType::BF16);
  // HF's own layout: prefixed names and a tied head saved twice.
  rewrite(file("f32.safetensors"), file("hf.safetensors"),
          [](const std::string& n) { return "transformer." + n; },
          {{"lm_head.weight", DType::F32, wte.shape,
            [&](std::byte* o) { std::memcpy(o, flat.data() + wte.offset, wte.numel() * 4); }}});
  for (const char* name : {"f32", "f16", "bf16", "hf"}) {
    SCOPED_TRACE(name);
    const std::string path = file(std::string(name) + ".safetensors");
    std::vector<float> full(flat.size());
    load_gpt_safetensors(path, cfg, reg, full.data());
    if (std::string(name) == "f32" || std::string(name) == "hf") {
      EXPECT_EQ(full, flat);
    }
    for (const auto& [begin, end] : slices(reg)) {
      std::vector<float> part(static_cast<size_t>(end - begin) + 1, -42.0f);  // one sentinel
      load_gpt_safetensors_range(path, cfg, reg, begin, end, part.data());
      ASSERT_EQ(std::memcmp(part.data(), full.data() + begin, (end - begin) * sizeof(float)), 0)
          << "[" << begin << ", " << end << ")";
      EXPECT_EQ(part.back(), -42.0f) << "[" << begin << ", " << end << ") wrote past its end";
    }
  }
  std::vector<float> scratch(flat.size() + 1);
  expect_invalid(
      [&] { load_gpt_safetensors_range(file("f32.safetensors"), cfg, reg, 5, 3, scratch.data()); },
      {"[5, 3) is not a range of the model's"});
  expect_invalid(
      [&] {
        load_gpt_safetensors_range(file("f32.safetensors"), cfg, reg, 0, reg.numel() + 1,
                                   scratch.data());
      },
      {"is not a range of the model's"});
}

TEST_F(WeightsIoTest, RangeLoadsCheckTheWholeHeaderButTheTiedHeadOnTheirSliceOnly) {
  const GPTConfig cfg = tiny_config();
  const ParamRegistry reg = build_gpt_registry(cfg);
  const std::vector<float> flat = distinct_params(reg);
  const ParamSpec& wte = reg.find("wte.weight");
  save_gpt_safetensors(file("model.safetensors"), cfg, reg, flat.data());
  // The head differs from wte in its last element only.
  rewrite(file("model.safetensors"), file("untied.safetensors"),
          [](const std::string& n) { return n; },
          {{"lm_head.weight", DType::F32, wte.shape, [&](std::byte* o) {
              std::memcpy(o, flat.data() + wte.offset, wte.numel() * 4);
              const float other = 123.0f;
              std::memcpy(o + (wte.numel() - 1) * 4, &other, 4);
            }}});
  std::vector<float> part(static_cast<size_t>(reg.numel()));
  const int64_t last = wte.offset + wte.numel() - 1;
  expect_invalid(
      [&] {
        load_gpt_safetensors_range(file("untied.safetensors"), cfg, reg, last, last + 1,
                                   part.data());
      },
      {"'lm_head.weight' differs from wte.weight"});
  // A slice that misses the differing element cannot see it; the ranks holding it do.
  EXPECT_NO_THROW(
      load_gpt_safetensors_range(file("untied.safetensors"), cfg, reg, 0, last, part.data()));
  // A header problem fails every slice, even one that reads no bad tensor.
  rewrite(file("model.safetensors"), file("extra.safetensors"),
          [](const std::string& n) { return n; },
          {{"h.9.extra", DType::F32, {2}, [&](std::byte* o) { std::memset(o, 0, 8); }}});
  expect_invalid(
      [&] { load_gpt_safetensors_range(file("extra.safetensors"), cfg, reg, 0, 1, part.data()); },
      {"unexpected tensor 'h.9.extra'"});
}

}  // namespace
}  // namespace tessera::models
