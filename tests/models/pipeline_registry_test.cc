// A pipeline rank's registry (build_gpt_registry with a PipelinePart): it holds only its
// chunks' layers under the whole model's layer numbers, every parameter starts from the
// whole model's values, the head copy as wte's twin, and a safetensors file loads into it as
// into the whole model.
#include <gtest/gtest.h>

#include <filesystem>
#include <vector>

#include "models/gpt.h"
#include "models/weights_io.h"

namespace tessera::models {
namespace {

GPTConfig config() { return {4, 2, 8, 11, 6}; }

// Each of a part's parameters, element by element, is the whole model's parameter of the same
// name (lm_head: wte) in `whole`.
void expect_values_of_whole(const ParamRegistry& part, const std::vector<float>& values,
                            const ParamRegistry& whole, const std::vector<float>& whole_values) {
  for (const ParamSpec& p : part.params()) {
    const ParamSpec& w = whole.find(p.name == "lm_head.weight" ? "wte.weight" : p.name);
    ASSERT_EQ(p.numel(), w.numel()) << p.name;
    for (int64_t j = 0; j < p.numel(); ++j) {
      ASSERT_EQ(values[p.offset + j], whole_values[w.offset + j]) << p.name << " element " << j;
    }
  }
}

TEST(PipelineRegistry, HoldsOnlyItsChunksUnderTheModelsLayerNumbers) {
  const GPTConfig cfg = config();
  const GptLayers layers(cfg, 1, /*head_copy=*/true);
  // Blocks [0, 1) and [2, 3): an interleaved rank of 2 stages x 2 chunks holding the embedding.
  const PipelinePart first{{{0, 1}, {2, 3}}};
  const ParamRegistry reg = build_gpt_registry(cfg, 1, true, {}, first);
  ASSERT_EQ(reg.num_layers(), layers.num_layers());
  for (int l = 0; l < layers.num_layers(); ++l) {
    const bool held = l < layers.first_layer_of_block(1) ||
                      (l >= layers.first_layer_of_block(2) && l < layers.first_layer_of_block(3));
    EXPECT_EQ(reg.layer(l).numel() > 0, held) << "layer " << l;
  }
  EXPECT_NO_THROW(reg.find("wte.weight"));
  EXPECT_THROW(reg.find("lm_head.weight"), InvalidArgument);
  EXPECT_THROW(reg.find("h.1.ln_1.weight"), InvalidArgument);

  const PipelinePart last{{{1, 2}, {3, 4}}};
  const ParamRegistry tail = build_gpt_registry(cfg, 1, true, {}, last);
  EXPECT_NO_THROW(tail.find("lm_head.weight"));
  EXPECT_NO_THROW(tail.find("ln_f.weight"));
  EXPECT_THROW(tail.find("wte.weight"), InvalidArgument);
  // Between them the two ranks hold the model, plus the head copy.
  const ParamRegistry whole = build_gpt_registry(cfg);
  EXPECT_EQ(reg.numel() + tail.numel(), whole.numel() + whole.find("wte.weight").numel());
}

TEST(PipelineRegistry, PartsStartFromTheWholeModelsValues) {
  const GPTConfig cfg = config();
  const ParamRegistry whole = build_gpt_registry(cfg);
  std::vector<float> whole_values(whole.numel());
  init_params(whole, whole_values.data(), 7);
  for (const PipelinePart& part :
       {PipelinePart{{{0, 2}}}, PipelinePart{{{2, 4}}}, PipelinePart{{{1, 2}, {3, 4}}}}) {
    const ParamRegistry reg = build_gpt_registry(cfg, 1, true, {}, part);
    std::vector<float> values(reg.numel());
    init_params(reg, values.data(), 7);
    expect_values_of_whole(reg, values, whole, whole_values);
  }
  // With tensor parallelism too: each rank's part of each held parameter.
  const ParamRegistry tp = build_gpt_registry(cfg, 1, true, {2, 1, false}, PipelinePart{{{2, 4}}});
  std::vector<float> values(tp.numel());
  init_params(tp, values.data(), 7);
  for (const ParamSpec& p : tp.params()) {
    const ParamSpec& w = whole.find(p.name == "lm_head.weight" ? "wte.weight" : p.name);
    for (int64_t j = 0; j < p.numel(); ++j) {
      const int64_t at = p.whole_index(j);
      ASSERT_EQ(values[p.offset + j], at >= 0 ? whole_values[w.offset + at] : 0.0f)
          << p.name << " element " << j;
    }
  }
}

TEST(PipelineRegistry, LoadsASafetensorsFileLikeTheWholeModel) {
  const GPTConfig cfg = config();
  const ParamRegistry whole = build_gpt_registry(cfg);
  std::vector<float> whole_values(whole.numel());
  init_params(whole, whole_values.data(), 3);
  const std::string dir = (std::filesystem::path(testing::TempDir()) / "tessera_pp_registry").string();
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/model.safetensors";
  save_gpt_safetensors(path, cfg, whole, whole_values.data());
  for (const PipelinePart& part : {PipelinePart{{{0, 1}, {2, 3}}}, PipelinePart{{{1, 2}, {3, 4}}}}) {
    const ParamRegistry reg = build_gpt_registry(cfg, 1, true, {}, part);
    std::vector<float> values(reg.numel(), -1.0f);
    load_gpt_safetensors(path, cfg, reg, values.data());
    expect_values_of_whole(reg, values, whole, whole_values);
  }
}

}  // namespace
}  // namespace tessera::models
