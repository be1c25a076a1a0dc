// `tessera estimate --tp T`: the figures it prints per rank are the ZeRO plan of the rank's
// local (tensor-parallel) registry and the activation layout of its TpLayout, laid out as the
// trainer lays the model out; a T that does not divide n_head is refused, naming the numbers.
#include <gtest/gtest.h>

#include <iostream>
#include <sstream>
#include <string>

#include "launch/commands.h"
#include "memory/zero/zero_plan.h"
#include "models/gpt.h"
#include "runtime/core/error.h"
#include "runtime/core/memory_stats.h"

namespace tessera::launch {
namespace {

// What run_estimate writes on std::cout.
std::string estimate_output(const EstimateOptions& o) {
  std::ostringstream out;
  std::streambuf* const saved = std::cout.rdbuf(out.rdbuf());
  try {
    run_estimate(o);
  } catch (...) {
    std::cout.rdbuf(saved);
    throw;
  }
  std::cout.rdbuf(saved);
  return out.str();
}

// The figure of a row ("  params        237.4 MiB  (...)" -> "237.4 MiB"); empty when none.
std::string row_figure(const std::string& output, const std::string& name) {
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream fields(line);
    std::string what, number, unit;
    if (fields >> what >> number >> unit && what == name) return number + " " + unit;
  }
  return "";
}

EstimateOptions gpt2_options(int stage, int ranks, const std::string& dtype, int tp) {
  EstimateOptions o;
  o.model = "gpt2-124M";
  o.stage = stage;
  o.ranks = ranks;
  o.dtype = dtype;
  o.tp = tp;
  o.process_bytes = 0;  // the figures below are the plan's alone
  return o;
}

struct Case {
  int stage, ranks;
  const char* dtype;
};

TEST(EstimateTensorParallel, ModelStateIsThePlanOfTheLocalRegistry) {
  const models::GPTConfig config = models::gpt_preset("gpt2-124M");
  for (const Case c : {Case{0, 1, "f32"}, Case{1, 2, "bf16"}, Case{2, 4, "f32"}, Case{3, 2, "bf16"},
                       Case{3, 1, "f32"}}) {
    SCOPED_TRACE(::testing::Message()
                 << "stage " << c.stage << ", " << c.ranks << " data-parallel ranks, " << c.dtype);
    const EstimateOptions o = gpt2_options(c.stage, c.ranks, c.dtype, 2);
    const std::string out = estimate_output(o);
    // As the trainer builds it: rank 0 of the tensor-parallel group, stage 3 on several
    // data-parallel ranks chunking its vocabulary slice.
    const int chunks = c.stage == 3 && c.ranks > 1 ? models::zero3_wte_chunks(config, 2) : 1;
    const ParamRegistry local = models::build_gpt_registry(config, chunks, false, {2, 0, false});
    const memory::ZeroOptions z = estimate_zero_options(o);
    const memory::ModelStateBytes b = memory::plan_model_state(local, z, 0, c.ranks);
    EXPECT_EQ(row_figure(out, "params"), format_bytes(b.params)) << out;
    EXPECT_EQ(row_figure(out, "grads"), format_bytes(b.grads)) << out;
    EXPECT_EQ(row_figure(out, "optimizer"), format_bytes(b.optimizer)) << out;
    const int64_t gathered =
        c.stage == 3 && c.ranks > 1 ? memory::plan_gathered_bytes(local, z, c.ranks) : 0;
    EXPECT_EQ(row_figure(out, "total"), format_bytes(b.total() + gathered)) << out;
    if (gathered > 0) {
      EXPECT_EQ(row_figure(out, "gathered"), format_bytes(gathered)) << out;
    }
    // Per rank of the group: not the one-rank model's figures.
    const std::string whole = estimate_output(gpt2_options(c.stage, c.ranks, c.dtype, 1));
    EXPECT_NE(row_figure(out, "params"), row_figure(whole, "params"));
    EXPECT_NE(out.find(fmt::format("ranks: {} data-parallel x 2 tensor-parallel = {}", c.ranks,
                                   2 * c.ranks)),
              std::string::npos)
        << out;
    EXPECT_NE(out.find(fmt::format("vocabulary {} padded to {}", config.vocab_size,
                                   models::padded_vocab(config.vocab_size, 2))),
              std::string::npos)
        << out;
  }
}

TEST(EstimateTensorParallel, ActivationsFollowTheTpLayout) {
  const models::GPTConfig config = models::gpt_preset("gpt2-124M");
  for (const bool sp : {false, true}) {
    EstimateOptions o = gpt2_options(1, 2, "bf16", 4);
    o.sequence_parallel = sp;
    o.batch = 2;
    o.seq = 128;
    const std::string out = estimate_output(o);
    const int64_t acts =
        models::GPT<float>::activation_bytes_for(config, 2, 128, DType::BF16, {}, 1, {4, 0, sp});
    EXPECT_EQ(row_figure(out, "activations"), format_bytes(acts)) << out;
  }
}

TEST(Estimate, TheProcessRowIsAddedToTheTotal) {
  EstimateOptions o = gpt2_options(1, 1, "bf16", 1);
  o.process_bytes = int64_t{150} << 20;
  const std::string out = estimate_output(o);
  const memory::ModelStateBytes b = memory::plan_model_state(
      models::build_gpt_registry(models::gpt_preset("gpt2-124M"), 1, false, {}),
      estimate_zero_options(o), 0, 1);
  EXPECT_EQ(row_figure(out, "process"), "150.0 MiB") << out;
  EXPECT_EQ(row_figure(out, "total"), format_bytes(b.total() + o.process_bytes)) << out;
  // Measured when not given: this test process's own resident set.
  o.process_bytes = -1;
  EXPECT_NE(row_figure(estimate_output(o), "process"), "") << out;
}

TEST(EstimateTensorParallel, OneRankGroupPrintsAsBefore) {
  const std::string out = estimate_output(gpt2_options(2, 4, "f32", 1));
  EXPECT_NE(out.find("ZeRO stage 2, 4 ranks, f32, per rank:"), std::string::npos) << out;
  EXPECT_EQ(out.find("tensor-parallel"), std::string::npos) << out;
  EXPECT_EQ(out.find("padded"), std::string::npos) << out;
}

// The message of the InvalidArgument run_estimate throws (empty when it does not throw).
std::string refusal(const EstimateOptions& o) {
  try {
    estimate_output(o);
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "";
}

TEST(EstimateTensorParallel, RefusesSizesThatDoNotDivideTheHeads) {
  const std::string message = refusal(gpt2_options(0, 1, "f32", 5));
  EXPECT_NE(message.find("--tp 5"), std::string::npos) << message;
  EXPECT_NE(message.find("does not divide n_head 12"), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;  // one line

  EXPECT_NE(refusal(gpt2_options(0, 1, "f32", 0)).find("--tp must be >= 1"), std::string::npos);
  EstimateOptions sp_alone = gpt2_options(0, 1, "f32", 1);
  sp_alone.sequence_parallel = true;
  EXPECT_NE(refusal(sp_alone).find("give --tp > 1"), std::string::npos);
  EstimateOptions formula;
  formula.params = 124'000'000;
  formula.tp = 2;
  EXPECT_NE(refusal(formula).find("needs --model PRESET"), std::string::npos);
  // Sequence parallelism splits the micro-batch's tokens: 1 x 3 over 2 ranks does not divide.
  EstimateOptions odd = gpt2_options(0, 1, "f32", 2);
  odd.sequence_parallel = true;
  odd.batch = 1;
  odd.seq = 3;
  EXPECT_NE(refusal(odd).find("sequence_parallel"), std::string::npos);
}

}  // namespace
}  // namespace tessera::launch
