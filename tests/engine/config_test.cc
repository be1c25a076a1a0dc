// The training config: defaults, DeepSpeed's batch triple, and that every mistake in the JSON
// is an InvalidArgument naming the key (with a did-you-mean when one is close).
#include "runtime/engine/config.h"

#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "runtime/core/error.h"
#include "engine_test_util.h"

namespace tessera::engine {
namespace {

using nlohmann::json;
using test_util::Contains;
using test_util::Lacks;
using test_util::message_of;
using test_util::OneLine;

// The smallest config that parses: a model and a token file (not opened by the parser).
json minimal() {
  return json{{"train_micro_batch_size_per_gpu", 4},
              {"model", {{"preset", "nano"}}},
              {"data", {{"train", "tokens.bin"}}}};
}

TrainConfig parse(const json& j) { return parse_train_config(j.dump(), "test.json"); }

std::string parse_error(const json& j) {
  return message_of<InvalidArgument>([&] { parse(j); });
}

TEST(ConfigDefaults, MinimalConfigFillsTheDocumentedDefaults) {
  const TrainConfig c = parse(minimal());
  EXPECT_EQ(c.micro_batch_size, 4);
  EXPECT_EQ(c.train_batch_size, 0);  // implied later by resolve_batch
  EXPECT_EQ(c.gradient_accumulation_steps, 0);
  EXPECT_EQ(c.gradient_clipping, 0.0);
  EXPECT_EQ(c.steps_per_print, 10);
  EXPECT_EQ(c.optimizer.type, "AdamW");
  EXPECT_FLOAT_EQ(c.optimizer.lr, 1e-3f);
  EXPECT_FLOAT_EQ(c.optimizer.beta1, 0.9f);
  EXPECT_FLOAT_EQ(c.optimizer.beta2, 0.999f);
  EXPECT_FLOAT_EQ(c.optimizer.eps, 1e-8f);
  EXPECT_FLOAT_EQ(c.optimizer.weight_decay, 0.01f);
  EXPECT_EQ(c.scheduler.type, "");  // constant lr
  EXPECT_EQ(c.model_preset, "nano");
  EXPECT_EQ(c.model.n_layer, 2);
  EXPECT_EQ(c.model.n_head, 2);
  EXPECT_EQ(c.model.n_embd, 32);
  EXPECT_EQ(c.model.vocab_size, 256);
  EXPECT_EQ(c.model.block_size, 32);
  ASSERT_EQ(c.train_files.size(), 1u);
  EXPECT_EQ(c.train_files[0], "tokens.bin");
  EXPECT_TRUE(c.val_files.empty());
  EXPECT_EQ(c.seq_len, 32);  // the model's block_size
  EXPECT_FALSE(c.shuffle);
  EXPECT_EQ(c.steps, 100);
  EXPECT_EQ(c.seed, 1337u);
  EXPECT_EQ(c.threads, 0);
  EXPECT_EQ(c.eval_interval, 0);
  EXPECT_EQ(c.eval_iters, 10);
  EXPECT_EQ(c.sample_tokens, 0);
  EXPECT_EQ(c.sample_prompt, "\n");
  EXPECT_FLOAT_EQ(c.sample_temperature, 0.8f);
  EXPECT_EQ(c.sample_top_k, 40);
  EXPECT_EQ(c.output_dir, "runs/default");
}

TEST(ConfigDefaults, SchedulerDefaultsMatchDeepSpeed) {
  json j = minimal();
  j["scheduler"] = {{"type", "WarmupLR"}};
  const TrainConfig c = parse(j);
  EXPECT_EQ(c.scheduler.type, "WarmupLR");
  EXPECT_EQ(c.scheduler.warmup_min_lr, 0.0);
  EXPECT_DOUBLE_EQ(c.scheduler.warmup_max_lr, 0.001);  // DeepSpeed: not the optimizer's lr
  EXPECT_EQ(c.scheduler.warmup_num_steps, 1000);
  EXPECT_EQ(c.scheduler.warmup_type, "log");
  EXPECT_LT(c.scheduler.total_num_steps, 0);  // tessera: training.steps
  EXPECT_EQ(c.scheduler.warmup_min_ratio, 0.0);
  EXPECT_DOUBLE_EQ(c.scheduler.cos_min_ratio, 0.0001);
}

TEST(ConfigParse, ReadsEveryBlock) {
  const json j = json::parse(R"({
    "train_batch_size": 32,
    "train_micro_batch_size_per_gpu": 8,
    "gradient_accumulation_steps": 4,
    "gradient_clipping": 1,
    "steps_per_print": 5,
    "optimizer": {"type": "Adam", "params": {"lr": 3e-4, "betas": [0.8, 0.95], "eps": 1e-6,
                                             "weight_decay": 0.0}},
    "scheduler": {"type": "WarmupCosineLR",
                  "params": {"warmup_num_steps": 7, "warmup_type": "linear",
                             "total_num_steps": 70, "warmup_min_ratio": 0.2,
                             "cos_min_ratio": 0.05}},
    "fp16": {"enabled": false},
    "bf16": {"enabled": false},
    "zero_optimization": {"stage": 0},
    "model": {"n_layer": 3, "n_head": 4, "n_embd": 64, "vocab_size": 300, "block_size": 48},
    "data": {"train": ["a.bin", "b.bin"], "val": "v.bin", "seq_len": 16, "shuffle": true},
    "training": {"steps": 12, "seed": 7, "threads": 2, "eval_interval": 3, "eval_iters": 2,
                 "sample_tokens": 5, "sample_prompt": "ROMEO:", "sample_temperature": 0.5,
                 "sample_top_k": 7},
    "output": {"dir": "out/x"}
  })");
  const TrainConfig c = parse(j);
  EXPECT_EQ(c.train_batch_size, 32);
  EXPECT_EQ(c.micro_batch_size, 8);
  EXPECT_EQ(c.gradient_accumulation_steps, 4);
  EXPECT_EQ(c.gradient_clipping, 1.0);  // an integer is accepted where a number is expected
  EXPECT_EQ(c.steps_per_print, 5);
  EXPECT_EQ(c.optimizer.type, "Adam");
  EXPECT_FLOAT_EQ(c.optimizer.lr, 3e-4f);
  EXPECT_FLOAT_EQ(c.optimizer.beta1, 0.8f);
  EXPECT_FLOAT_EQ(c.optimizer.beta2, 0.95f);
  EXPECT_FLOAT_EQ(c.optimizer.eps, 1e-6f);
  EXPECT_FLOAT_EQ(c.optimizer.weight_decay, 0.0f);
  EXPECT_EQ(c.scheduler.type, "WarmupCosineLR");
  EXPECT_EQ(c.scheduler.warmup_num_steps, 7);
  EXPECT_EQ(c.scheduler.warmup_type, "linear");
  EXPECT_EQ(c.scheduler.total_num_steps, 70);
  EXPECT_DOUBLE_EQ(c.scheduler.warmup_min_ratio, 0.2);
  EXPECT_DOUBLE_EQ(c.scheduler.cos_min_ratio, 0.05);
  EXPECT_EQ(c.model_preset, "");
  EXPECT_EQ(c.model.n_layer, 3);
  EXPECT_EQ(c.model.n_head, 4);
  EXPECT_EQ(c.model.n_embd, 64);
  EXPECT_EQ(c.model.vocab_size, 300);
  EXPECT_EQ(c.model.block_size, 48);
  EXPECT_EQ(c.train_files, (std::vector<std::string>{"a.bin", "b.bin"}));
  EXPECT_EQ(c.val_files, (std::vector<std::string>{"v.bin"}));
  EXPECT_EQ(c.seq_len, 16);
  EXPECT_TRUE(c.shuffle);
  EXPECT_EQ(c.steps, 12);
  EXPECT_EQ(c.seed, 7u);
  EXPECT_EQ(c.threads, 2);
  EXPECT_EQ(c.eval_interval, 3);
  EXPECT_EQ(c.eval_iters, 2);
  EXPECT_EQ(c.sample_tokens, 5);
  EXPECT_EQ(c.sample_prompt, "ROMEO:");
  EXPECT_FLOAT_EQ(c.sample_temperature, 0.5f);
  EXPECT_EQ(c.sample_top_k, 7);
  EXPECT_EQ(c.output_dir, "out/x");
}

TEST(ConfigParse, PresetFieldsCanBeOverridden) {
  json j = minimal();
  j["model"] = {{"preset", "tiny"}, {"vocab_size", 256}, {"block_size", 128}};
  const TrainConfig c = parse(j);
  EXPECT_EQ(c.model_preset, "tiny");
  EXPECT_EQ(c.model.n_layer, 4);
  EXPECT_EQ(c.model.n_embd, 256);
  EXPECT_EQ(c.model.vocab_size, 256);
  EXPECT_EQ(c.model.block_size, 128);
  EXPECT_EQ(c.seq_len, 128);
}

// --- the DeepSpeed batch triple: train_batch = micro x accumulation x dp_world ------------

struct Triple {
  int64_t total;
  int micro;
  int accum;
};

Triple resolved(Triple given, int world) {
  TrainConfig c;
  c.train_batch_size = given.total;
  c.micro_batch_size = given.micro;
  c.gradient_accumulation_steps = given.accum;
  c.resolve_batch(world);
  return {c.train_batch_size, c.micro_batch_size, c.gradient_accumulation_steps};
}

void expect_triple(Triple given, int world, Triple want) {
  const Triple got = resolved(given, world);
  EXPECT_EQ(got.total, want.total) << "world " << world;
  EXPECT_EQ(got.micro, want.micro) << "world " << world;
  EXPECT_EQ(got.accum, want.accum) << "world " << world;
}

TEST(ConfigBatch, MicroAndAccumulationImplyTheTotal) {
  expect_triple({0, 4, 2}, 1, {8, 4, 2});
  expect_triple({0, 4, 2}, 4, {32, 4, 2});
}

TEST(ConfigBatch, TotalAndMicroImplyTheAccumulation) {
  expect_triple({32, 4, 0}, 1, {32, 4, 8});
  expect_triple({32, 4, 0}, 4, {32, 4, 2});
}

TEST(ConfigBatch, TotalAndAccumulationImplyTheMicroBatch) {
  expect_triple({32, 0, 2}, 1, {32, 16, 2});
  expect_triple({32, 0, 2}, 4, {32, 4, 2});
}

TEST(ConfigBatch, OneValueAloneMeansNoAccumulation) {
  expect_triple({0, 6, 0}, 1, {6, 6, 1});
  expect_triple({0, 6, 0}, 4, {24, 6, 1});
  expect_triple({8, 0, 0}, 1, {8, 8, 1});
  expect_triple({8, 0, 0}, 4, {8, 2, 1});
}

TEST(ConfigBatch, ConsistentTripleIsKept) {
  expect_triple({8, 4, 2}, 1, {8, 4, 2});
  expect_triple({32, 4, 2}, 4, {32, 4, 2});
}

TEST(ConfigBatch, InconsistentTripleThrowsWithTheArithmetic) {
  const std::string m1 = message_of<InvalidArgument>([] { resolved({30, 4, 2}, 1); });
  EXPECT_TRUE(Contains(m1, "train_batch_size 30"));
  EXPECT_TRUE(Contains(m1, "train_micro_batch_size_per_gpu 4"));
  EXPECT_TRUE(Contains(m1, "gradient_accumulation_steps 2"));
  EXPECT_TRUE(Contains(m1, "data-parallel size 1"));
  EXPECT_TRUE(Contains(m1, "= 8"));
  // Consistent at world 1 (8 = 4 x 2 x 1) but not at world 4 (4 x 2 x 4 = 32).
  const std::string m4 = message_of<InvalidArgument>([] { resolved({8, 4, 2}, 4); });
  EXPECT_TRUE(Contains(m4, "train_batch_size 8"));
  EXPECT_TRUE(Contains(m4, "data-parallel size 4"));
  EXPECT_TRUE(Contains(m4, "= 32"));
  EXPECT_TRUE(OneLine(m4));
}

TEST(ConfigBatch, IndivisibleTotalThrows) {
  const std::string a = message_of<InvalidArgument>([] { resolved({30, 4, 0}, 1); });
  EXPECT_TRUE(Contains(a, "train_batch_size 30 is not divisible"));
  EXPECT_TRUE(Contains(a, "train_micro_batch_size_per_gpu 4"));
  const std::string b = message_of<InvalidArgument>([] { resolved({30, 0, 4}, 1); });
  EXPECT_TRUE(Contains(b, "train_batch_size 30 is not divisible"));
  EXPECT_TRUE(Contains(b, "gradient_accumulation_steps 4"));
  const std::string c = message_of<InvalidArgument>([] { resolved({6, 0, 0}, 4); });
  EXPECT_TRUE(Contains(c, "train_batch_size 6 is not divisible by the data-parallel size 4"));
  // The total smaller than one micro-batch per rank.
  const std::string d = message_of<InvalidArgument>([] { resolved({4, 4, 0}, 4); });
  EXPECT_TRUE(Contains(d, "not divisible"));
}

TEST(ConfigBatch, NoBatchSizeAtAllThrows) {
  const std::string m = message_of<InvalidArgument>([] { resolved({0, 0, 0}, 1); });
  EXPECT_TRUE(Contains(m, "no batch size"));
  EXPECT_TRUE(Contains(m, "train_micro_batch_size_per_gpu"));
}

TEST(ConfigBatch, ParsedTripleResolves) {
  json j = minimal();
  j["train_batch_size"] = 64;
  j.erase("train_micro_batch_size_per_gpu");
  j["gradient_accumulation_steps"] = 4;
  TrainConfig c = parse(j);
  c.resolve_batch(2);
  EXPECT_EQ(c.micro_batch_size, 8);
  EXPECT_EQ(c.gradient_accumulation_steps, 4);
  EXPECT_EQ(c.train_batch_size, 64);
}

// --- unknown keys ---------------------------------------------------------------------------

TEST(ConfigCheckpoint, ReadsTheBlockAndRefusesBadValues) {
  json j = minimal();
  j["checkpoint"] = {{"dir", "ck"}, {"save_interval", 50}, {"keep_last", 3},
                     {"async_save", true}, {"resume", "latest"}};
  const TrainConfig c = parse(j);
  EXPECT_EQ(c.checkpoint.dir, "ck");
  EXPECT_EQ(c.checkpoint.save_interval, 50);
  EXPECT_EQ(c.checkpoint.keep_last, 3);
  EXPECT_TRUE(c.checkpoint.async_save);
  EXPECT_EQ(c.checkpoint.resume, "latest");
  EXPECT_TRUE(parse(minimal()).checkpoint.dir.empty());  // off by default

  j["checkpoint"]["save_interval"] = -1;
  EXPECT_TRUE(Contains(parse_error(j), "checkpoint.save_interval must be >= 0"));
  j["checkpoint"]["save_interval"] = 5;
  j["checkpoint"]["keep_lst"] = 1;
  EXPECT_TRUE(Contains(parse_error(j), "did you mean 'checkpoint.keep_last'?"));
  json no_dir = minimal();
  no_dir["checkpoint"] = {{"save_interval", 5}};
  const std::string m = parse_error(no_dir);
  EXPECT_TRUE(Contains(m, "needs checkpoint.dir"));
  EXPECT_TRUE(OneLine(m));
}

TEST(ConfigUnknownKey, NearMissSuggestsTheKey) {
  json j = minimal();
  j["gradient_cliping"] = 1.0;
  const std::string m = parse_error(j);
  EXPECT_TRUE(Contains(m, "test.json"));
  EXPECT_TRUE(Contains(m, "unknown key 'gradient_cliping'"));
  EXPECT_TRUE(Contains(m, "did you mean 'gradient_clipping'?"));
  EXPECT_TRUE(OneLine(m));
}

TEST(ConfigUnknownKey, NearMissInANestedBlockNamesTheFullPath) {
  json j = minimal();
  j["optimizer"] = {{"type", "AdamW"}, {"params", {{"lr", 1e-3}, {"weight_decy", 0.1}}}};
  const std::string m = parse_error(j);
  EXPECT_TRUE(Contains(m, "unknown key 'optimizer.params.weight_decy'"));
  EXPECT_TRUE(Contains(m, "did you mean 'optimizer.params.weight_decay'?"));

  json k = minimal();
  k["model"]["n_layers"] = 3;
  const std::string n = parse_error(k);
  EXPECT_TRUE(Contains(n, "unknown key 'model.n_layers'"));
  EXPECT_TRUE(Contains(n, "did you mean 'model.n_layer'?"));
}

TEST(ConfigUnknownKey, FarKeyHasNoSuggestion) {
  json j = minimal();
  j["completely_unrelated_setting"] = 1;
  const std::string m = parse_error(j);
  EXPECT_TRUE(Contains(m, "unknown key 'completely_unrelated_setting'"));
  EXPECT_TRUE(Lacks(m, "did you mean"));
  EXPECT_TRUE(OneLine(m));
}

TEST(ConfigUnknownKey, SchedulerParamsOfAnotherScheduleAreUnknown) {
  // WarmupCosineLR is parameterised by ratios, not by absolute learning rates.
  json j = minimal();
  j["scheduler"] = {{"type", "WarmupCosineLR"}, {"params", {{"warmup_max_lr", 1e-3}}}};
  EXPECT_TRUE(Contains(parse_error(j), "unknown key 'scheduler.params.warmup_max_lr'"));
}

// --- wrong types ----------------------------------------------------------------------------

TEST(ConfigWrongType, StringForAnIntegerNamesTheKey) {
  json j = minimal();
  j["steps_per_print"] = "10";
  const std::string m = parse_error(j);
  EXPECT_TRUE(Contains(m, "'steps_per_print' must be an integer"));
  EXPECT_TRUE(Contains(m, "\"10\""));
  EXPECT_TRUE(OneLine(m));
}

TEST(ConfigWrongType, NumberForAPathNamesTheKey) {
  json j = minimal();
  j["data"]["train"] = 5;
  EXPECT_TRUE(Contains(parse_error(j), "'data.train' must be a path or a list of paths"));
  j["data"]["train"] = json::array({"a.bin", 3});
  EXPECT_TRUE(Contains(parse_error(j), "'data.train' must be a list of strings"));
}

TEST(ConfigWrongType, OtherFieldsNameTheirKeyAndType) {
  struct Case {
    const char* block;  // "" for the root
    const char* key;
    json value;
    const char* expect;
  };
  const Case cases[] = {
      {"", "gradient_clipping", "1.0", "'gradient_clipping' must be a number"},
      {"", "train_micro_batch_size_per_gpu", 2.5, "'train_micro_batch_size_per_gpu' must be an integer"},
      {"model", "n_layer", "2", "'model.n_layer' must be an integer"},
      {"model", "preset", 3, "'model.preset' must be a string"},
      {"data", "shuffle", 1, "'data.shuffle' must be true or false"},
      {"data", "seq_len", "16", "'data.seq_len' must be an integer"},
  };
  for (const Case& c : cases) {
    json j = minimal();
    if (std::string(c.block).empty()) {
      j[c.key] = c.value;
    } else {
      j[c.block][c.key] = c.value;
    }
    EXPECT_TRUE(Contains(parse_error(j), c.expect)) << c.key;
  }
  json t = minimal();
  t["training"] = {{"steps", "many"}};
  EXPECT_TRUE(Contains(parse_error(t), "'training.steps' must be an integer"));
  json o = minimal();
  o["optimizer"] = {{"params", {{"lr", "fast"}}}};
  EXPECT_TRUE(Contains(parse_error(o), "'optimizer.params.lr' must be a number"));
  json b = minimal();
  b["optimizer"] = {{"params", {{"betas", json::array({0.9})}}}};
  EXPECT_TRUE(Contains(parse_error(b), "optimizer.params.betas must be a list of two numbers"));
  json blk = minimal();
  blk["model"] = "tiny";
  EXPECT_TRUE(Contains(parse_error(blk), "'model' must be a JSON object"));
}

TEST(ConfigValues, OutOfRangeValuesAreRefused) {
  json j = minimal();
  j["optimizer"] = {{"type", "SGD"}};
  EXPECT_TRUE(Contains(parse_error(j), "optimizer.type 'SGD' is not supported"));
  j = minimal();
  j["scheduler"] = {{"type", "OneCycle"}};
  EXPECT_TRUE(Contains(parse_error(j), "scheduler.type 'OneCycle' is not supported"));
  j = minimal();
  j["scheduler"] = {{"type", "WarmupLR"}, {"params", {{"warmup_type", "cubic"}}}};
  EXPECT_TRUE(Contains(parse_error(j), "warmup_type 'cubic' must be log or linear"));
  j = minimal();
  j["data"]["seq_len"] = 33;  // nano's block_size is 32
  EXPECT_TRUE(Contains(parse_error(j), "data.seq_len 33 must be in [1, model.block_size = 32]"));
  j = minimal();
  j["gradient_clipping"] = -1.0;
  EXPECT_TRUE(Contains(parse_error(j), "gradient_clipping must be >= 0"));
  j = minimal();
  j["optimizer"] = {{"params", {{"betas", json::array({0.9, 1.0})}}}};
  EXPECT_TRUE(Contains(parse_error(j), "betas must be in [0, 1)"));
  j = minimal();
  j["model"] = {{"preset", "gpt7"}};
  EXPECT_TRUE(Contains(parse_error(j), "unknown model preset 'gpt7'"));
  j = minimal();
  j["data"]["train"] = json::array();
  EXPECT_TRUE(Contains(parse_error(j), "data.train names no token file"));
  j = minimal();
  j["training"] = {{"sample_temperature", -0.5}};
  EXPECT_TRUE(Contains(parse_error(j), "training.sample_temperature must be a finite number >= 0"));
  j = minimal();
  j["training"] = {{"sample_top_k", -1}};
  EXPECT_TRUE(Contains(parse_error(j), "training.sample_top_k must be >= 0"));
}

// --- malformed JSON and missing blocks -------------------------------------------------------

TEST(ConfigMalformed, SyntaxErrorNamesTheSourceAndPosition) {
  const std::string m = message_of<InvalidArgument>(
      [] { parse_train_config("{\"model\": {\"preset\": \"nano\"},\n \"data\": }", "broken.json"); });
  EXPECT_TRUE(Contains(m, "broken.json: malformed JSON"));
  EXPECT_TRUE(Contains(m, "line 2"));
  EXPECT_TRUE(Lacks(m, "[json.exception"));
  EXPECT_TRUE(OneLine(m));
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([] { parse_train_config("", "empty.json"); }),
                       "empty.json: malformed JSON"));
}

TEST(ConfigMalformed, RootMustBeAnObject) {
  const std::string m = message_of<InvalidArgument>([] { parse_train_config("[1, 2]", "list.json"); });
  EXPECT_TRUE(Contains(m, "list.json"));
  EXPECT_TRUE(Contains(m, "must be a JSON object"));
}

TEST(ConfigMalformed, MissingModelOrDataBlock) {
  json j = minimal();
  j.erase("model");
  EXPECT_TRUE(Contains(parse_error(j), "missing the 'model' block"));
  j = minimal();
  j.erase("data");
  EXPECT_TRUE(Contains(parse_error(j), "missing the 'data' block"));
}

// --- blocks a later version implements --------------------------------------------------------

TEST(ConfigZero, ParameterOffloadIsReadAndChecked) {
  json j = minimal();
  j["zero_optimization"] = {{"stage", 3},
                            {"offload_param",
                             {{"device", "nvme"},
                              {"nvme_path", "/tmp"},
                              {"buffer_count", 3},
                              {"buffer_size", 2e7},
                              {"max_in_cpu", 0}}}};
  const TrainConfig c = parse(j);
  EXPECT_EQ(c.zero.offload_param.device, memory::OffloadDevice::Nvme);
  EXPECT_EQ(c.zero.offload_param.buffer_count, 3);
  EXPECT_EQ(c.zero.offload_param.buffer_size, 20'000'000);
  EXPECT_EQ(c.zero.offload_param.max_in_cpu, 0);
  j["zero_optimization"]["offload_param"]["buffer_count"] = 1;
  const std::string m = parse_error(j);
  EXPECT_TRUE(Contains(m, "offload_param.buffer_count must be >= 2"));
  EXPECT_TRUE(OneLine(m));
  j["zero_optimization"]["offload_param"] = {{"device", "nvme"}, {"nvme_path", ""}};
  EXPECT_TRUE(Contains(parse_error(j), "offload_param.nvme_path is empty"));
}

TEST(ConfigZero, StageZeroBlockIsReadWithDefaults) {
  const TrainConfig d = parse(minimal());
  EXPECT_EQ(d.zero.stage, 0);
  EXPECT_EQ(d.zero.reduce_bucket_size, 25'000'000);
  EXPECT_TRUE(d.zero.overlap_comm);
  json j = minimal();
  j["zero_optimization"] = {{"stage", 0},
                            {"reduce_bucket_size", 1000},
                            {"overlap_comm", false},
                            {"contiguous_gradients", true},
                            {"allgather_bucket_size", 2000},
                            {"reduce_scatter", true},
                            {"allgather_partitions", true}};
  const TrainConfig c = parse(j);
  EXPECT_EQ(c.zero.stage, 0);
  EXPECT_EQ(c.zero.reduce_bucket_size, 1000);
  EXPECT_FALSE(c.zero.overlap_comm);
  EXPECT_EQ(c.zero.allgather_bucket_size, 2000);
}

TEST(ConfigZero, BadZeroBlocksNameTheKey) {
  json j = minimal();
  j["zero_optimization"] = {{"stage", "2"}};
  EXPECT_TRUE(Contains(parse_error(j), "'zero_optimization.stage' must be an integer"));
  j["zero_optimization"] = {{"stage", 4}};
  EXPECT_TRUE(Contains(parse_error(j), "zero_optimization.stage 4 does not exist"));
  j["zero_optimization"] = {{"stage", 2}, {"offload_param", {{"device", "nvme"}}}};
  EXPECT_TRUE(Contains(parse_error(j), "offload_param needs ZeRO stage 3"));
  j["zero_optimization"] = {{"stage", 0}, {"reduce_bucket_sise", 10}};
  EXPECT_TRUE(Contains(parse_error(j), "did you mean 'zero_optimization.reduce_bucket_size'?"));
  j["zero_optimization"] = {{"reduce_bucket_size", 0}};
  EXPECT_TRUE(Contains(parse_error(j), "reduce_bucket_size must be >= 1"));
  j["zero_optimization"] = 2;
  EXPECT_TRUE(Contains(parse_error(j), "'zero_optimization' must be a JSON object"));
}

TEST(ConfigParse, InitFromDefaultsToEmpty) {
  EXPECT_EQ(parse(minimal()).init_from, "");
  json j = minimal();
  j["model"]["init_from"] = "runs/x/model.safetensors";
  EXPECT_EQ(parse(j).init_from, "runs/x/model.safetensors");
}

TEST(ConfigUnsupported, DisabledBlocksAreAccepted) {
  json j = minimal();
  j["fp16"] = {{"enabled", false}};
  j["bf16"] = {{"enabled", false}};
  j["zero_optimization"] = {{"stage", 0}};
  EXPECT_NO_THROW(parse(j));
}

// --- --set overrides ----------------------------------------------------------------------------

TEST(ConfigOverrides, NumberStringAndNestedCreation) {
  const std::string base = R"({"a": {"b": 1, "keep": true}, "s": "x"})";
  const json out = json::parse(apply_overrides(base, {"a.b=3", "s=foo", "x.y.z=1.5", "a.c=[1,2]",
                                                      "flag=false"}));
  EXPECT_EQ(out["a"]["b"], 3);
  EXPECT_TRUE(out["a"]["b"].is_number_integer());
  EXPECT_EQ(out["a"]["keep"], true);  // siblings stay
  EXPECT_EQ(out["s"], "foo");         // a bare word is a string
  EXPECT_EQ(out["x"]["y"]["z"], 1.5);
  EXPECT_EQ(out["a"]["c"], json::array({1, 2}));
  EXPECT_EQ(out["flag"], false);
}

TEST(ConfigOverrides, ValueMayBeAQuotedStringOrContainEquals) {
  const json out = json::parse(apply_overrides("{}", {"p=\"12\"", "q=a=b", "path=data/x.bin"}));
  EXPECT_EQ(out["p"], "12");  // JSON string, not the number 12
  EXPECT_EQ(out["q"], "a=b");
  EXPECT_EQ(out["path"], "data/x.bin");
}

TEST(ConfigOverrides, NoOverridesReturnsTheTextUnchanged) {
  const std::string text = "{ \"a\" : 1 }";
  EXPECT_EQ(apply_overrides(text, {}), text);
}

TEST(ConfigOverrides, MalformedOverridesThrow) {
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([] { apply_overrides("{}", {"noequals"}); }),
                       "--set 'noequals' must look like key.path=value"));
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([] { apply_overrides("{}", {"=3"}); }),
                       "must look like key.path=value"));
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([] { apply_overrides("{}", {"a..b=3"}); }),
                       "empty key"));
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([] { apply_overrides("{\"a\": 1}", {"a.b=2"}); }),
                       "'a' is not an object"));
}

// Found by tests/fuzz/fuzz_config.cc: each escaped as a nlohmann exception, or was accepted.
TEST(ConfigOverrides, FuzzFindingsAreOneLineErrors) {
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([] { apply_overrides("[1]", {"a=1"}); }),
                       "the config is a JSON array, not an object of settings"));
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([] { apply_overrides("{}", {"a=\xff"}); }),
                       "is not valid UTF-8"));
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([] { apply_overrides("{}", {"a=1e999"}); }),
                       "1e999 is out of range for a number"));
}

TEST(ConfigValues, FuzzFindingsAreOneLineErrors) {
  json j = minimal();
  j["zero_optimization"] = {{"offload_optimizer", {{"device", 3}}}};
  EXPECT_TRUE(Contains(parse_error(j), "'zero_optimization.offload_optimizer.device' must be a string"));
  j = minimal();
  j["optimizer"] = {{"params", {{"lr", 1e300}}}};  // an infinite float otherwise
  EXPECT_TRUE(Contains(parse_error(j), "optimizer.params.lr' must be a number of magnitude at most"));
  j = minimal();
  j.erase("train_micro_batch_size_per_gpu");
  j["train_batch_size"] = 4294967297LL;  // 2^32 + 1: its quotient does not fit an int
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([&] { parse(j).resolve_batch(1); }),
                       "lower train_batch_size"));
  j = minimal();
  j["train_micro_batch_size_per_gpu"] = 2147483647;
  j["gradient_accumulation_steps"] = 2147483647;
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([&] { parse(j).resolve_batch(1 << 30); }),
                       "overflows a 64-bit count"));
}

TEST(ConfigOverrides, LoadAppliesOverridesBeforeParsing) {
  test_util::ScratchDir dir;
  const std::string path = dir.file("c.json");
  test_util::write_bytes(path, minimal().dump());
  const TrainConfig c =
      load_train_config(path, {"training.steps=7", "data.train=other.bin", "model.n_layer=3"});
  EXPECT_EQ(c.steps, 7);
  EXPECT_EQ(c.train_files, (std::vector<std::string>{"other.bin"}));
  EXPECT_EQ(c.model.n_layer, 3);
  // An override with a typo is checked like the file itself.
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([&] { load_train_config(path, {"training.step=7"}); }),
                       "did you mean 'training.steps'?"));
}

TEST(ConfigLoad, MissingFileAndMalformedFileNameThePath) {
  test_util::ScratchDir dir;
  const std::string missing = dir.file("nope.json");
  const std::string m = message_of<InvalidArgument>([&] { load_train_config(missing); });
  EXPECT_TRUE(Contains(m, "cannot read config file"));
  EXPECT_TRUE(Contains(m, missing));
  const std::string bad = dir.file("bad.json");
  test_util::write_bytes(bad, "{\"model\": ");
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([&] { load_train_config(bad); }),
                       bad + ": malformed JSON"));
  // With an override too, the file's own syntax error is what gets reported.
  EXPECT_TRUE(Contains(message_of<InvalidArgument>([&] { load_train_config(bad, {"a=1"}); }),
                       bad + ": malformed JSON"));
}

// Integers are range-checked: 2^32 + 1 must not narrow silently to 1, nor -1 wrap to 2^64 - 1.
TEST(ConfigErrors, IntegerOutOfRangeIsRefused) {
  json j = minimal();
  j["train_micro_batch_size_per_gpu"] = 4294967297LL;
  EXPECT_TRUE(Contains(parse_error(j), "train_micro_batch_size_per_gpu"));
  j = minimal();
  j["training"] = {{"seed", -1}};  // uint64: wraps to 2^64 - 1
  EXPECT_TRUE(Contains(parse_error(j), "training.seed"));
}

// A number out of double range is nlohmann's out_of_range, not a parse_error: still named.
TEST(ConfigErrors, NumberOverflowNamesTheSource) {
  const std::string m = message_of<InvalidArgument>([] {
    parse_train_config(R"({"gradient_clipping": 1e400, "model": {"preset": "nano"},
                           "data": {"train": "x.bin"}, "train_micro_batch_size_per_gpu": 1})",
                       "big.json");
  });
  EXPECT_TRUE(Contains(m, "big.json"));
}

TEST(ConfigLoad, EveryExampleConfigParses) {
  const char* src = std::getenv("TESSERA_SOURCE_DIR");
  const std::filesystem::path dir = std::filesystem::path(src ? src : ".") / "configs";
  int seen = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".json") continue;
    TrainConfig c = load_train_config(entry.path().string());
    EXPECT_NO_THROW(c.resolve_batch(4)) << entry.path();
    ++seen;
  }
  EXPECT_GE(seen, 3);
}

TEST(ConfigLoad, DemoConfigParses) {
  const char* src = std::getenv("TESSERA_SOURCE_DIR");
  const std::string path = std::string(src ? src : ".") + "/configs/demo.json";
  const TrainConfig c = load_train_config(path);
  EXPECT_EQ(c.model_preset, "tiny");
  EXPECT_EQ(c.model.vocab_size, 256);
  EXPECT_EQ(c.scheduler.type, "WarmupCosineLR");
  EXPECT_EQ(c.micro_batch_size, 16);
}

}  // namespace
}  // namespace tessera::engine

namespace tessera::engine {
namespace {

// DeepSpeed's activation_checkpointing block in Megatron's terms (docs/CONFIG.md).
TEST(ConfigActivationCheckpointing, AbsentMeansNoneAndPresentMeansFull) {
  EXPECT_EQ(parse(minimal()).recompute.granularity, models::RecomputeGranularity::None);
  json j = minimal();
  // DeepSpeed's template block as written by its docs.
  j["activation_checkpointing"] = {{"partition_activations", false},
                                   {"cpu_checkpointing", false},
                                   {"contiguous_memory_optimization", false},
                                   {"number_checkpoints", nullptr},
                                   {"synchronize_checkpoint_boundary", false},
                                   {"profile", false}};
  const TrainConfig c = parse(j);
  EXPECT_EQ(c.recompute.granularity, models::RecomputeGranularity::Full);
  EXPECT_EQ(c.recompute.method, models::RecomputeMethod::Uniform);
  EXPECT_EQ(c.recompute.num_layers, 1);
  EXPECT_EQ(c.recompute.number_checkpoints, 0);
}

TEST(ConfigActivationCheckpointing, ReadsMegatronTerms) {
  json j = minimal();
  j["activation_checkpointing"] = {{"recompute_granularity", "full"},
                                   {"recompute_method", "block"},
                                   {"recompute_num_layers", 3},
                                   {"cpu_checkpointing", true}};
  TrainConfig c = parse(j);
  EXPECT_EQ(c.recompute.method, models::RecomputeMethod::Block);
  EXPECT_EQ(c.recompute.num_layers, 3);
  EXPECT_TRUE(c.recompute.cpu_checkpointing);
  j["activation_checkpointing"] = {{"recompute_granularity", "selective"}};
  EXPECT_EQ(parse(j).recompute.granularity, models::RecomputeGranularity::Selective);
  j["activation_checkpointing"] = {{"recompute_granularity", "none"}};
  EXPECT_EQ(parse(j).recompute.granularity, models::RecomputeGranularity::None);
  j["activation_checkpointing"] = {{"number_checkpoints", 4}};
  EXPECT_EQ(parse(j).recompute.number_checkpoints, 4);
}

TEST(ConfigActivationCheckpointing, RefusesWhatItCannotDo) {
  auto error_for = [](const json& block) {
    json j = minimal();
    j["activation_checkpointing"] = block;
    return parse_error(j);
  };
  EXPECT_TRUE(Contains(error_for({{"recompute_granularity", "partial"}}),
                       "recompute_granularity 'partial' must be full, selective or none"));
  EXPECT_TRUE(Contains(error_for({{"recompute_method", "random"}}),
                       "recompute_method 'random' must be uniform or block"));
  EXPECT_TRUE(Contains(error_for({{"recompute_num_layers", 0}}), "recompute_num_layers must be >= 1"));
  EXPECT_TRUE(Contains(error_for({{"number_checkpoints", 2}, {"recompute_num_layers", 2}}),
                       "both number_checkpoints and recompute_num_layers"));
  EXPECT_TRUE(Contains(error_for({{"recompute_granularity", "selective"}, {"recompute_num_layers", 2}}),
                       "apply to recompute_granularity full only"));
  EXPECT_TRUE(Contains(error_for({{"recompute_granularity", "selective"}, {"cpu_checkpointing", true}}),
                       "set recompute_granularity to full"));
  EXPECT_TRUE(Contains(error_for({{"partition_activations", true}}),
                       "partition_activations is not supported"));
  EXPECT_TRUE(Contains(error_for({{"profile", true}}), "profile is not supported"));
  EXPECT_TRUE(Contains(error_for({{"recompute_granularty", "full"}}),
                       "did you mean 'activation_checkpointing.recompute_granularity'"));
}

}  // namespace
}  // namespace tessera::engine
