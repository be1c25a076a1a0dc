// The checkpoint format without a model run:
// - the pieces of every layout tile the one-rank tensors exactly: tensor-parallel sizes
//   1, 2, 4 (padded vocabulary, column splits, q/k/v row runs) cut by ZeRO shards over 1-3
//   ranks, every piece element mapping where ParamSpec::whole_index says, no padding saved;
// - the manifest's JSON round trip, and its checks: a newer format version, a piece outside
//   its tensor, a missing field, a piece naming an unknown file;
// - check_coverage finds a gap and an overlap.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

#include "engine_test_util.h"
#include "memory/flat_buffers.h"
#include "models/gpt.h"
#include "runtime/engine/checkpoint_format.h"

namespace tessera::engine {
namespace {

using test_util::Contains;
using test_util::message_of;

TEST(LocalPieces, WholeParameterIsOneBoxOrRowCuts) {
  ParamSpec p;
  p.name = "w";
  p.shape = {4, 5};
  std::vector<LocalPiece> all = local_pieces(p, 0, 20);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].box.rows, 4);
  EXPECT_EQ(all[0].box.cols, 5);
  // [3, 17): the end of row 0, rows 1-2, the start of row 3.
  std::vector<LocalPiece> cut = local_pieces(p, 3, 17);
  ASSERT_EQ(cut.size(), 3u);
  EXPECT_EQ(cut[0].local_begin, 3);
  EXPECT_EQ(cut[0].box.row, 0);
  EXPECT_EQ(cut[0].box.col, 3);
  EXPECT_EQ(cut[0].box.cols, 2);
  EXPECT_EQ(cut[1].local_begin, 5);
  EXPECT_EQ(cut[1].box.rows, 2);
  EXPECT_EQ(cut[2].local_begin, 15);
  EXPECT_EQ(cut[2].box.row, 3);
  EXPECT_EQ(cut[2].box.cols, 2);
  ParamSpec v;
  v.name = "b";
  v.shape = {7};
  std::vector<LocalPiece> vec = local_pieces(v, 2, 6);
  ASSERT_EQ(vec.size(), 1u);
  EXPECT_EQ(vec[0].box.row, 2);
  EXPECT_EQ(vec[0].box.rows, 4);
  EXPECT_EQ(vec[0].box.cols, 1);
}

struct TilingCase {
  int tp;
  int dp;
};

class PiecesTile : public testing::TestWithParam<TilingCase> {};

// Every element of every whole tensor lands in exactly one piece over the tensor-parallel
// ranks and ZeRO shards, where whole_index puts it; padding rows land nowhere.
TEST_P(PiecesTile, EveryLayoutCoversTheWholeTensorsOnce) {
  const auto [t, dp] = GetParam();
  const models::GPTConfig config{2, 4, 32, 257, 16};  // vocab 257: padded under tp
  const ParamRegistry whole = models::build_gpt_registry(config);
  std::map<std::string, std::vector<int>> seen;
  for (const ParamSpec& p : whole.params()) seen[p.name].assign(p.numel(), 0);
  for (int r = 0; r < t; ++r) {
    const ParamRegistry reg = models::build_gpt_registry(config, 1, false, {t, r, false});
    for (int d = 0; d < dp; ++d) {
      const memory::ShardLayout layout(reg.numel(), d, dp);
      const memory::ShardRange mine = layout.owned();
      for (const ParamSpec& p : reg.params()) {
        if (t > 1 && p.split == TpSplit::None && r != 0) continue;  // saved by tp rank 0
        const memory::ShardRange at = memory::intersect({p.offset, p.offset + p.numel()}, mine);
        if (at.numel() == 0) continue;
        const int64_t cols = view_cols(whole.find(p.name).shape);
        int64_t previous_end = at.begin - p.offset;
        for (const LocalPiece& piece : local_pieces(p, at.begin - p.offset, at.end - p.offset)) {
          // Pieces go forward through the local part; only padding lies between them.
          for (int64_t j = previous_end; j < piece.local_begin; ++j) {
            EXPECT_EQ(p.whole_index(j), -1) << p.name << " element " << j << " skipped";
          }
          for (int64_t k = 0; k < piece.box.numel(); ++k) {
            const int64_t row = piece.box.row + k / piece.box.cols;
            const int64_t col = piece.box.col + k % piece.box.cols;
            ASSERT_EQ(p.whole_index(piece.local_begin + k), row * cols + col) << p.name;
            ++seen[p.name][static_cast<size_t>(row * cols + col)];
          }
          previous_end = piece.local_begin + piece.box.numel();
        }
      }
    }
  }
  for (const auto& [name, counts] : seen) {
    for (size_t e = 0; e < counts.size(); ++e) {
      ASSERT_EQ(counts[e], 1) << name << " element " << e << " (tp " << t << ", dp " << dp << ")";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, PiecesTile,
                         testing::Values(TilingCase{1, 1}, TilingCase{1, 3}, TilingCase{2, 1},
                                         TilingCase{2, 2}, TilingCase{4, 3}),
                         [](const auto& info) {
                           return "tp" + std::to_string(info.param.tp) + "_dp" +
                                  std::to_string(info.param.dp);
                         });

Manifest small_manifest() {
  Manifest m;
  m.model = {2, 4, 32, 257, 16};
  m.layout = {4, 2, 2, 1, 1, 1, true, DType::BF16};
  m.progress.step = 7;
  m.progress.optimizer_steps = 6;
  m.progress.lr = 1.5e-3;
  m.progress.loss_scaler = LossScaler::State{1024.0, 1, 7, 3, 1, 1};
  m.progress.consumed_micro_batches = 56;
  m.progress.micro_batch_size = 2;
  m.progress.seq_len = 16;
  m.progress.shuffle = true;
  m.progress.data_seed = 99;
  m.progress.seed = 99;
  m.tensors = {{"a", {2, 3}}, {"b", {3}}};
  m.files = {"rank-00000.bin", "rank-00001.bin"};
  m.pieces = {
      {"a", TensorKind::Master, DType::F32, {0, 1, 0, 3}, "rank-00000.bin", 0, 12, 0x1234},
      {"a", TensorKind::Master, DType::F32, {1, 1, 0, 3}, "rank-00001.bin", 0, 12, 0x5678},
      {"b", TensorKind::Master, DType::F32, {0, 3, 0, 1}, "rank-00000.bin", 64, 12, 0x9abc},
  };
  return m;
}

TEST(Manifest, RoundTripsThroughJson) {
  const Manifest m = small_manifest();
  const Manifest back = manifest_from_json(manifest_to_json(m), "test");
  EXPECT_EQ(manifest_to_json(back), manifest_to_json(m));
  EXPECT_EQ(back.layout.precision, DType::BF16);
  ASSERT_TRUE(back.progress.loss_scaler.has_value());
  EXPECT_EQ(back.progress.loss_scaler->scale, 1024.0);
  EXPECT_EQ(back.progress.loss_scaler->last_overflow_iteration, 3);
  EXPECT_EQ(back.pieces[1].crc32c, 0x5678u);
  EXPECT_EQ(back.total_bytes(), 36u);
  // A vector's box is written in its own rank: one offset, one size.
  const auto j = nlohmann::json::parse(manifest_to_json(m));
  EXPECT_EQ(j["pieces"][2]["offsets"].size(), 1u);
  EXPECT_EQ(j["pieces"][0]["sizes"].size(), 2u);
  check_coverage(back);
}

std::string edited(const std::function<void(nlohmann::json&)>& edit) {
  auto j = nlohmann::json::parse(manifest_to_json(small_manifest()));
  edit(j);
  return j.dump();
}

TEST(Manifest, RefusesANewerVersionAndDamage) {
  std::string msg = message_of<Error>(
      [] { manifest_from_json(edited([](auto& j) { j["version"] = 2; }), "m.json"); });
  EXPECT_TRUE(Contains(msg, "version 2"));
  EXPECT_TRUE(Contains(msg, "reads versions up to 1"));
  msg = message_of<Error>([] {
    manifest_from_json(edited([](auto& j) { j["pieces"][0]["offsets"] = {1, 2}; }), "m.json");
  });
  EXPECT_TRUE(Contains(msg, "outside its shape"));
  msg = message_of<Error>(
      [] { manifest_from_json(edited([](auto& j) { j.erase("layout"); }), "m.json"); });
  EXPECT_TRUE(Contains(msg, "m.json"));
  msg = message_of<Error>([] {
    manifest_from_json(edited([](auto& j) { j["pieces"][0]["file"] = "other.bin"; }), "m.json");
  });
  EXPECT_TRUE(Contains(msg, "other.bin"));
  msg = message_of<Error>([] {
    manifest_from_json(edited([](auto& j) { j["pieces"][0]["file"] = "../x"; }), "m.json");
  });
  EXPECT_TRUE(Contains(msg, "not a file name"));
  msg = message_of<Error>([] { manifest_from_json("{\"format\": 3", "m.json"); });
  EXPECT_TRUE(Contains(msg, "not JSON"));
}

TEST(Manifest, CoverageFindsGapsAndOverlaps) {
  Manifest gap = small_manifest();
  gap.pieces.erase(gap.pieces.begin() + 1);
  EXPECT_TRUE(Contains(message_of<Error>([&] { check_coverage(gap); }), "cover 3 of its 6"));
  Manifest overlap = small_manifest();
  overlap.pieces[1].box.row = 0;
  EXPECT_TRUE(Contains(message_of<Error>([&] { check_coverage(overlap); }), "in two pieces"));
}

}  // namespace
}  // namespace tessera::engine
