#include "runtime/engine/trainer.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "models/weights_io.h"
#include "parallel/comm/agree.h"
#include "runtime/core/logging.h"
#include "runtime/engine/lr_schedule.h"
#include "runtime/engine/metrics.h"
#include "runtime/kernels/cpu_kernels.h"
#include "runtime/kernels/cpu_mixed.h"

namespace tessera::engine {

namespace k = tessera::kernels::cpu;
namespace pp = tessera::parallel::pp;

namespace {

// fp16 holds magnitudes up to 65504: a larger initial weight would become inf in the working
// copy, and every step would then overflow until the loss scale hit its minimum. `weights`
// holds elements [range.begin, range.end) of the flat model; with a group, each rank passes
// its own shard and one all-reduce (max) of every parameter's largest magnitude gives every
// rank the whole model's, so they all fail together, with the same message.
void check_fp16_range(const ParamRegistry& registry, const float* weights, memory::ShardRange range,
                      parallel::ProcessGroup* group) {
  constexpr float kMaxF16 = 65504.0f;
  const std::vector<ParamSpec>& params = registry.params();
  std::vector<float> largest(params.size(), 0.0f);
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamSpec& p = params[i];
    const memory::ShardRange part = memory::intersect({p.offset, p.offset + p.numel()}, range);
    if (part.numel() == 0) continue;
    const float* w = weights + (part.begin - range.begin);
    float m = 0.0f;
#pragma omp parallel for reduction(max : m)
    for (int64_t j = 0; j < part.numel(); ++j) m = std::max(m, std::abs(w[j]));
    largest[i] = m;
  }
  if (group != nullptr) {
    parallel::AllreduceOptions opts;
    opts.op = parallel::ReduceOp::Max;
    group->all_reduce(largest.data(), largest.size(), DType::F32, opts)->wait();
  }
  for (size_t i = 0; i < params.size(); ++i) {
    TS_CHECK(largest[i] <= kMaxF16,
             "fp16: initial weight '{}' holds a value of magnitude {}, beyond fp16's largest "
             "finite value 65504: train in bf16 (bf16.enabled) instead",
             params[i].name, largest[i]);
  }
}

// The world in Megatron's layout when the layers are split over tensor-parallel ranks.
std::unique_ptr<parallel::Topology> tensor_parallel_topology(parallel::ProcessGroup* world,
                                                             const TrainConfig& c) {
  const int t = c.tensor_parallel;
  if (t == 1) return nullptr;
  const int ranks = world != nullptr ? world->size() : 1;
  TS_CHECK(ranks % t == 0,
           "parallelism.tensor_model_parallel_size {} needs a multiple of {} ranks, this run has "
           "{}: run {} ranks (--sim-ranks or mpirun -np) or lower it",
           t, t, ranks, t);
  return std::make_unique<parallel::Topology>(*world, parallel::ParallelShape{ranks / t, t, 1});
}

parallel::ProcessGroup* data_parallel_group(parallel::ProcessGroup* world,
                                            const parallel::Topology* topology) {
  parallel::ProcessGroup* dp = topology != nullptr ? &topology->dp() : world;
  return dp != nullptr && dp->size() > 1 ? dp : nullptr;
}

models::TpLayout tp_layout(const parallel::Topology* topology, const TrainConfig& c) {
  if (topology == nullptr) return {};
  return {topology->shape().tp, topology->coords().tp, c.sequence_parallel};
}

}  // namespace

Trainer::Trainer(TrainConfig config, parallel::ProcessGroup* world)
    : config_(std::move(config)),
      world_(world != nullptr && world->size() > 1 ? world : nullptr),
      topology_(tensor_parallel_topology(world_, config_)),
      dp_(data_parallel_group(world_, topology_.get())),
      tp_(topology_ != nullptr ? &topology_->tp() : nullptr),
      model_(config_.model, config_.precision, Device::cpu(),
             dp_ != nullptr && config_.zero.stage == 3
                 ? models::zero3_wte_chunks(config_.model, config_.tensor_parallel)
                 : 1,
             tp_layout(topology_.get(), config_)),
      full_registry_(models::build_gpt_registry(config_.model)) {
  if (tp_ != nullptr) model_.stage().set_tensor_parallel(tp_);
  if (config_.threads > 0) omp_set_num_threads(config_.threads);
  config_.resolve_batch(dp_size());
  if (config_.precision == DType::F16) scaler_.emplace(config_.loss_scaler);
  const DType dtype = config_.precision;
  const ParamRegistry& registry = model_.registry();
  const int64_t numel = registry.numel();
  const bool sharded = dp_ != nullptr && config_.zero.stage >= 1;
  state_ = std::make_unique<memory::FlatState>(dtype, sharded ? 0 : numel,
                                               memory::ShardRange{0, sharded ? 0 : numel});
  if (sharded) {
    // Stages 1-3: every rank builds only its own shard, from the seed or by reading its slice
    // of the checkpoint (every rank opens the file, as DeepSpeed's ranks do, and reads only
    // its part of the mapping); no rank ever holds the whole fp32 model. Stages 1-2 then
    // all-gather the working copy from the shards.
    memory::ZeroOptions options = config_.zero.options();
    options.dtype = dtype;
    const memory::ShardInit init = [&](memory::ShardRange range, float* out) {
      if (config_.init_from.empty()) {
        init_params_range(registry, out, config_.seed, range.begin, range.end);
      } else {
        models::load_gpt_safetensors_range(config_.init_from, config_.model, registry, range.begin,
                                           range.end, out);
      }
    };
    auto access = std::make_unique<memory::ShardedParamAccess>(registry, *dp_, options, init);
    sharded_ = access.get();
    access_ = std::move(access);
    if (dtype == DType::F16) {
      const memory::OptimizerShard shard = sharded_->shard();
      check_fp16_range(registry, shard.master, shard.range, tp_ != nullptr ? world_ : dp_);
    }
  } else {
    // Stage 0 keeps the whole model: build it straight in its fp32 weights (the master copy
    // when training in 16 bits). The seed gives every rank the same model, so there is
    // nothing to send; a checkpoint is read by rank 0 alone (one reader, and the file need
    // exist only where rank 0 runs) and broadcast, agreed so a bad file fails every rank
    // with rank 0's message.
    float* weights = state_->master();
    if (config_.init_from.empty()) {
      init_params(registry, weights, config_.seed);
    } else if (dp_ == nullptr) {
      models::load_gpt_safetensors(config_.init_from, config_.model, registry, weights);
    } else {
      parallel::run_agreed(*dp_, [&] {
        if (dp_->rank() == 0) {
          models::load_gpt_safetensors(config_.init_from, config_.model, registry, weights);
        }
      });
      dp_->broadcast(weights, static_cast<size_t>(numel), DType::F32)->wait();
    }
    // Identical on every rank: each checks the whole model alone and all agree.
    // (With tensor parallelism each holds its part: all agree through the world.)
    if (dtype == DType::F16) {
      check_fp16_range(registry, weights, {0, numel}, tp_ != nullptr ? world_ : nullptr);
    }
    memory::store_working(dtype, weights, state_->params(), numel);
    if (dp_ != nullptr) {
      auto replicated = std::make_unique<memory::ReplicatedParamAccess>(
          registry, dtype, state_->params(), state_->grads(), *dp_,
          config_.zero.overlap_comm ? config_.zero.reduce_bucket_size : numel);
      replicated_ = replicated.get();
      access_ = std::move(replicated);
    } else {
      access_ = std::make_unique<LocalParamAccess>(registry, state_->params(), state_->grads(),
                                                   dtype_size(dtype));
    }
  }
  train_loader_ = std::make_unique<DataLoader>(config_.train_files, config_.micro_batch_size,
                                               config_.seq_len, config_.model.vocab_size,
                                               dp_rank(), dp_size(), config_.shuffle, config_.seed,
                                               parse_token_format(config_.data_format));
  schedule_ = pp::one_stage(config_.gradient_accumulation_steps);
  pp::validate(schedule_);
  slots_ = pp::assign_slots(schedule_.programs[0]);
  const int slots = pp::slots_needed(schedule_.programs[0]);
  model_.stage().set_recompute(config_.recompute);
  model_.stage().allocate(slots, config_.micro_batch_size, config_.seq_len);
  const size_t n = static_cast<size_t>(slots) * config_.micro_batch_size * config_.seq_len;
  inputs_.resize(n);
  targets_.resize(n);
}

Trainer::~Trainer() = default;

double Trainer::dp_mean(double x) {
  if (dp_ == nullptr) return x;
  // Reported, not trained on: an f32 mean (~1e-7 relative) is plenty.
  float f = static_cast<float>(x);
  parallel::AllreduceOptions opts;
  opts.op = parallel::ReduceOp::Avg;
  dp_->all_reduce(&f, 1, DType::F32, opts)->wait();
  return f;
}

memory::OptimizerShard Trainer::optimizer_shard() {
  if (sharded_ != nullptr) return sharded_->shard();
  memory::OptimizerShard s;
  s.range = {0, state_->numel()};
  s.dtype = state_->dtype();
  s.params = state_->params();
  s.grads = state_->grads();
  s.master = state_->master();
  s.exp_avg = state_->exp_avg();
  s.exp_avg_sq = state_->exp_avg_sq();
  return s;
}

double Trainer::grad_norm() {
  const memory::OptimizerShard s = optimizer_shard();
  auto sum_squares = [&](int64_t at, int64_t n) {
    return s.dtype == DType::F32
               ? k::sum_squares(static_cast<const float*>(s.grads) + at, n)
               : k::sum_squares16(s.dtype, static_cast<const uint16_t*>(s.grads) + at, n);
  };
  double sum = 0.0;
  if (tp_ == nullptr) {
    sum = sum_squares(0, s.range.numel());
  } else {
    // Every parameter once: each rank's part of a split one, a replicated one (the same on
    // every tensor-parallel rank) from group rank 0 alone.
    for (const ParamSpec& p : model_.registry().params()) {
      if (p.split == TpSplit::None && tp_->rank() != 0) continue;
      const memory::ShardRange part = memory::intersect({p.offset, p.offset + p.numel()}, s.range);
      if (part.numel() > 0) sum += sum_squares(part.begin - s.range.begin, part.numel());
    }
  }
  // Shards partition the model over the data-parallel ranks, tensor-parallel parts over their
  // group: the global sum of squares is the sum over the ranks holding disjoint pieces.
  // Gathered in f64 and added in rank order, so every rank gets the same bits.
  parallel::ProcessGroup* pieces = sharded_ != nullptr ? (tp_ != nullptr ? world_ : dp_) : tp_;
  if (pieces != nullptr) {
    std::vector<double> sums(pieces->size());
    pieces->all_gather(&sum, sums.data(), 1, DType::F64)->wait();
    sum = 0.0;
    for (double x : sums) sum += x;
  }
  return std::sqrt(sum);
}

bool Trainer::any_rank(bool local) {
  if (world_ == nullptr) return local;
  float flag = local ? 1.0f : 0.0f;
  parallel::AllreduceOptions opts;
  opts.op = parallel::ReduceOp::Max;
  world_->all_reduce(&flag, 1, DType::F32, opts)->wait();
  return flag > 0.0f;
}

void Trainer::optimizer_step(double lr, double grad_scale) {
  const OptimizerConfig& o = config_.optimizer;
  const memory::OptimizerShard s = optimizer_shard();
  for (const ParamSpec& p : model_.registry().params()) {
    // AdamW runs per tensor (decay depends on its shape) over the tensor's owned part.
    const memory::ShardRange part = memory::intersect({p.offset, p.offset + p.numel()}, s.range);
    if (part.numel() == 0) continue;
    const int64_t at = part.begin - s.range.begin;
    // GPT-2 practice: decay the matrices; biases and LayerNorm gains (1-D) are not decayed.
    const bool decay = p.shape.size() >= 2;
    k::AdamWParams a;
    a.lr = static_cast<float>(lr);
    a.beta1 = o.beta1;
    a.beta2 = o.beta2;
    a.eps = o.eps;
    a.step = updates_done_ + 1;
    a.grad_scale = static_cast<float>(grad_scale);
    a.weight_decay = decay && o.type == "AdamW" ? o.weight_decay : 0.0f;
    // Adam's L2 penalty: weight decay enters the gradient before the moments.
    a.l2 = decay && o.type == "Adam" ? o.weight_decay : 0.0f;
    if (s.dtype == DType::F32) {
      k::adamw_update(s.master + at, static_cast<const float*>(s.grads) + at, s.exp_avg + at,
                      s.exp_avg_sq + at, part.numel(), a);
    } else {
      k::adamw_update16(s.dtype, s.master + at, static_cast<uint16_t*>(s.params) + at,
                        static_cast<const uint16_t*>(s.grads) + at, s.exp_avg + at,
                        s.exp_avg_sq + at, part.numel(), a);
    }
  }
  access_->after_update();
}

Trainer::WholeWeights Trainer::whole_weights() {
  WholeWeights mine = local_weights();
  if (tp_ == nullptr) return mine;
  // Every tensor-parallel rank's part, gathered, then each element put where the whole
  // parameter holds it (replicated parameters from group rank 0; padding dropped).
  const ParamRegistry& registry = model_.registry();
  const auto local = static_cast<size_t>(registry.numel());
  const int t = tp_->size();
  Storage parts(local * t * sizeof(float), MemCategory::Other, Device::cpu(), /*zero=*/false);
  const auto* all = static_cast<const float*>(parts.data());
  tp_->all_gather(mine.data, parts.data(), local, DType::F32)->wait();
  mine = WholeWeights{};  // the local copy is no longer needed
  WholeWeights w;
  w.gathered = Storage(static_cast<size_t>(full_registry_.numel()) * sizeof(float),
                       MemCategory::Other, Device::cpu(), /*zero=*/false);
  auto* whole = static_cast<float*>(w.gathered.data());
  for (int r = 0; r < t; ++r) {
    models::TpLayout layout = tp_layout(topology_.get(), config_);
    layout.rank = r;
    const ParamRegistry rank_registry =
        models::build_gpt_registry(config_.model, model_.layers().wte_chunks, false, layout);
    const float* from = all + local * r;
    for (size_t i = 0; i < rank_registry.params().size(); ++i) {
      const ParamSpec& p = rank_registry.params()[i];
      if (p.split == TpSplit::None && r != 0) continue;
      float* to = whole + full_registry_.params()[i].offset;
#pragma omp parallel for schedule(static)
      for (int64_t j = 0; j < p.numel(); ++j) {
        const int64_t at = p.whole_index(j);
        if (at >= 0) to[at] = from[p.offset + j];
      }
    }
  }
  w.data = whole;
  return w;
}

Trainer::WholeWeights Trainer::local_weights() {
  WholeWeights w;
  if (sharded_ == nullptr) {
    w.data = state_->master();
    return w;
  }
  const auto numel = static_cast<size_t>(model_.registry().numel());
  w.gathered = Storage(numel * sizeof(float), MemCategory::Other, Device::cpu(), /*zero=*/false);
  sharded_->gather_full(static_cast<float*>(w.gathered.data()));
  w.data = static_cast<const float*>(w.gathered.data());
  return w;
}

std::vector<float> Trainer::full_params() {
  const WholeWeights w = whole_weights();
  return std::vector<float>(w.data, w.data + full_registry_.numel());
}

StepStats Trainer::step() {
  const auto start = std::chrono::steady_clock::now();
  const int accum = config_.gradient_accumulation_steps;
  const int B = config_.micro_batch_size, T = config_.seq_len;
  const size_t tokens = static_cast<size_t>(B) * T;
  models::Stage<float>& stage = model_.stage();
  const pp::StageProgram& program = schedule_.programs[0];
  access_->zero_grads();
  // fp16 scales the loss (so the gradients) up to keep small gradients representable.
  const double loss_scale = scaler_ ? scaler_->scale() : 1.0;
  double loss = 0.0;
  std::optional<StepStats> stats;
  for (size_t i = 0; i < program.size(); ++i) {
    const pp::Step& s = program[i];
    const int slot = slots_[i];
    int32_t* inputs = inputs_.data() + slot * tokens;
    int32_t* targets = targets_.data() + slot * tokens;
    switch (s.kind) {
      case pp::StepKind::Forward:
        access_->begin_micro_batch(/*training=*/true, /*last=*/s.micro_batch == accum - 1);
        train_loader_->next(inputs, targets);
        stage.forward(*access_, slot, inputs, B, T);
        break;
      case pp::StepKind::Backward:
        loss += stage.head(*access_, slot, targets, B, T, /*backward=*/true, loss_scale / accum) /
                static_cast<double>(tokens);
        stage.backward(*access_, slot, inputs, B, T);
        break;
      case pp::StepKind::ReduceGrads:
        access_->finish_gradients();
        break;
      case pp::StepKind::OptimizerStep:
        stats = finish_step(loss / accum, loss_scale);
        break;
      default:
        TS_THROW(InvalidArgument, "schedule '{}' moves activations between pipeline stages: "
                 "this engine runs one stage", schedule_.name);
    }
  }
  TS_CHECK(stats.has_value(), "schedule '{}' has no optimizer step", schedule_.name);
  stats->ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  // Tensor-parallel ranks share their micro-batches: the tokens are the data-parallel ranks'.
  stats->tokens_per_s = static_cast<double>(accum) * B * T * dp_size() / (stats->ms / 1000.0);
  return *stats;
}

StepStats Trainer::finish_step(double local_loss, double loss_scale) {
  if (gradient_hook_) gradient_hook_(steps_done_ + 1, optimizer_shard());
  const double loss = dp_mean(local_loss);
  const double scaled_norm = grad_norm();
  const double norm = scaled_norm / loss_scale;
  // An inf or nan in any rank's gradients: every rank must take the same decision.
  const bool overflow = any_rank(!std::isfinite(scaled_norm));
  StepStats s;
  if (scaler_) {
    s.loss_scale = loss_scale;
    s.skipped = scaler_->update(overflow);  // throws at the minimum scale
    s.skipped_steps = scaler_->skipped_steps();
    s.overflow_count = scaler_->overflow_count();
  } else {
    TS_CHECK(!overflow && std::isfinite(loss),
             "step {}: loss {} / gradient norm {} is not finite: lower optimizer.params.lr or set "
             "gradient_clipping",
             steps_done_ + 1, loss, norm);
  }
  const double lr =
      lr_for_update(config_.scheduler, config_.optimizer.lr, updates_done_, config_.steps);
  if (!s.skipped) {
    double clip_scale = 1.0;
    if (config_.gradient_clipping > 0.0 && norm > config_.gradient_clipping) {
      clip_scale = config_.gradient_clipping / (norm + 1e-6);
    }
    optimizer_step(lr, clip_scale / loss_scale);
    ++updates_done_;
  }
  ++steps_done_;
  s.step = steps_done_;
  s.loss = loss;
  s.lr = lr;
  s.grad_norm = norm;
  return s;
}

double Trainer::evaluate() {
  if (config_.val_files.empty()) return NAN;
  const int B = config_.micro_batch_size, T = config_.seq_len;
  DataLoader val(config_.val_files, B, T, config_.model.vocab_size, 0, 1, false, 0,
                 parse_token_format(config_.data_format));
  const int iters = static_cast<int>(std::min<int64_t>(config_.eval_iters, val.windows_per_epoch()));
  double sum = 0.0;
  for (int i = 0; i < iters; ++i) {
    val.next(inputs_.data(), targets_.data());
    access_->begin_micro_batch(/*training=*/false, /*last=*/false);
    sum += model_.forward(*access_, inputs_.data(), targets_.data(), B, T);
  }
  return sum / iters;
}

void Trainer::run() {
  namespace fs = std::filesystem;
  const bool writer = world_rank() == 0;
  const auto& m = config_.model;
  log_rank0("model: {} layers, {} heads, {} dims, vocab {}, block {}: {:.2f}M parameters",
            m.n_layer, m.n_head, m.n_embd, m.vocab_size, m.block_size, m.num_params() / 1e6);
  log_rank0("batch: {} x {} tokens x {} accumulation steps x {} data-parallel ranks = {} "
            "tokens/step, {} threads per rank",
            config_.micro_batch_size, config_.seq_len, config_.gradient_accumulation_steps,
            dp_size(), config_.train_batch_size * config_.seq_len, omp_get_max_threads());
  if (tp_ != nullptr) {
    log_rank0("tensor parallel: {} ranks per layer ({} backend), {} heads and {} vocabulary rows "
              "(of {}, padded from {}) each{}; data-parallel size {}",
              tp_size(), tp_->backend_name(), model_.layers().local_heads(m.n_head),
              model_.layers().vocab_rows, models::padded_vocab(m.vocab_size, tp_size()),
              m.vocab_size, config_.sequence_parallel ? ", sequence parallel" : "", dp_size());
  }
  if (replicated_ != nullptr) {
    log_rank0("data parallel: {} ranks ({} backend), gradients in {} all-reduce bucket(s)",
              dp_size(), dp_->backend_name(), replicated_->num_buckets());
  }
  if (sharded_ != nullptr) {
    log_rank0("ZeRO stage {}: {} ranks ({} backend), gradients in {} reduce-scatter bucket(s){}",
              sharded_->stage(), dp_size(), dp_->backend_name(), sharded_->num_buckets(),
              sharded_->stage() == 3
                  ? fmt::format(", {} layer(s) kept whole{}", sharded_->num_persistent_layers(),
                                model_.layers().chunked()
                                    ? fmt::format(", the word embedding in {} chunks",
                                                  model_.layers().wte_chunks)
                                    : "")
                  : "");
  } else if (dp_ == nullptr && config_.zero.stage > 0) {
    log_rank0("ZeRO stage {} on one rank: nothing to partition, running as stage 0",
              config_.zero.stage);
  }
  if (config_.precision != DType::F32) {
    log_rank0("precision: {} parameters, gradients and GEMMs, fp32 master weights and moments{}",
              dtype_name(config_.precision),
              scaler_ ? (scaler_->dynamic()
                             ? fmt::format(", dynamic loss scale from {}", scaler_->scale())
                             : fmt::format(", static loss scale {}", scaler_->scale()))
                      : "");
  }
  if (config_.recompute.granularity != models::RecomputeGranularity::None) {
    models::Stage<float>& stage = model_.stage();
    log_rank0("activation checkpointing: {}",
              models::describe(stage.recompute(), stage.block_groups(),
                               model_.ops().same_storage()));
  }
  log_rank0("memory: {}", format_memory(MemoryTracker::current().snapshot()));
  const double flops_per_token = m.flops_per_token(config_.seq_len);
  const double peak_gflops = peak_gflops_per_rank(omp_get_max_threads(), config_.precision);
  MetricsOptions metrics_options;
  metrics_options.run_dir = config_.output_dir;
  metrics_options.total_steps = config_.steps;
  metrics_options.steps_per_print = config_.steps_per_print;
  metrics_options.rank = world_rank();
  MetricsLogger metrics(metrics_options);
  for (int64_t i = 0; i < config_.steps; ++i) {
    const StepStats s = step();
    StepMetrics record;
    record.step = s.step;
    record.loss = s.loss;
    record.lr = s.lr;
    record.grad_norm = s.grad_norm;
    record.ms = s.ms;
    record.tokens_per_s = s.tokens_per_s;
    record.gflops = s.tokens_per_s * flops_per_token / 1e9;
    record.mfu =
        model_flops_utilization(s.tokens_per_s, flops_per_token, world_size(), peak_gflops);
    if (s.loss_scale) {
      record.loss_scale = s.loss_scale;
      record.skipped_steps = s.skipped_steps;
      record.overflow_count = s.overflow_count;
    }
    const bool last = s.step == config_.steps;
    if (!config_.val_files.empty() &&
        ((config_.eval_interval > 0 && s.step % config_.eval_interval == 0) || last)) {
      record.val_loss = evaluate();
    }
    record.memory = MemoryTracker::current().snapshot();
    metrics.log_step(record);
  }
  metrics.finish();
  log_rank0("memory: {}", format_memory(MemoryTracker::current().snapshot()));
  const WholeWeights weights_now = whole_weights();  // collective at stages 1-3
  if (writer) {
    const std::string weights = (fs::path(config_.output_dir) / "model.safetensors").string();
    models::save_gpt_safetensors(weights, config_.model, full_registry_, weights_now.data);
    log_rank0("saved {} (and config.json beside it)", weights);
  }
}

}  // namespace tessera::engine
