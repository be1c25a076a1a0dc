#include "runtime/engine/trainer.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "models/weights_io.h"
#include "memory/offload/nvme_state_store.h"
#include "memory/state_store.h"
#include "parallel/comm/agree.h"
#include "parallel/comm/thread_group.h"
#include "runtime/core/logging.h"
#include "runtime/core/memory_stats.h"
#include "runtime/core/settings.h"
#include "runtime/engine/lr_schedule.h"
#include "runtime/engine/metrics.h"
#include "runtime/engine/preflight.h"
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
// fp16's range: the largest magnitude of each parameter's initial fp32 values, noted range by
// range as they are made (so states on disk need not be read back), then agreed over `group`.
void note_largest(const ParamRegistry& registry, const float* weights, memory::ShardRange range,
                  std::vector<float>& largest) {
  const std::vector<ParamSpec>& params = registry.params();
  largest.resize(params.size(), 0.0f);
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamSpec& p = params[i];
    const memory::ShardRange part = memory::intersect({p.offset, p.offset + p.numel()}, range);
    if (part.numel() == 0) continue;
    const float* w = weights + (part.begin - range.begin);
    float m = 0.0f;
#pragma omp parallel for reduction(max : m)
    for (int64_t j = 0; j < part.numel(); ++j) m = std::max(m, std::abs(w[j]));
    largest[i] = std::max(largest[i], m);
  }
}

void check_fp16_range(const ParamRegistry& registry, std::vector<float> largest,
                      parallel::ProcessGroup* group) {
  constexpr float kMaxF16 = 65504.0f;
  const std::vector<ParamSpec>& params = registry.params();
  largest.resize(params.size(), 0.0f);
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

// Stages 1-3 shard the optimizer over the data-parallel ranks; on one such rank the state
// stays whole (stage 0) unless the optimizer or the parameters are offloaded, which works on
// the shard's states.
bool sharded_state(const TrainConfig& c, const parallel::ProcessGroup* dp) {
  return memory::plan_partitioned(c.zero.options(), dp != nullptr ? dp->size() : 1);
}

// The world in Megatron's layout when the layers are split over tensor-parallel ranks or
// pipeline stages.
std::unique_ptr<parallel::Topology> model_parallel_topology(parallel::ProcessGroup* world,
                                                            const TrainConfig& c) {
  const int t = c.tensor_parallel, p = c.pipeline_parallel;
  if (t == 1 && p == 1) return nullptr;
  const int ranks = world != nullptr ? world->size() : 1;
  if (p == 1) {
    TS_CHECK(ranks % t == 0,
             "parallelism.tensor_model_parallel_size {} needs a multiple of {} ranks, this run "
             "has {}: run {} ranks (--sim-ranks or mpirun -np) or lower it",
             t, t, ranks, t);
  } else {
    TS_CHECK(ranks % (t * p) == 0,
             "parallelism.tensor_model_parallel_size {} x pipeline_model_parallel_size {} needs a "
             "multiple of {} ranks, this run has {}: run {} ranks (--sim-ranks or mpirun -np) or "
             "lower them",
             t, p, t * p, ranks, t * p);
  }
  return std::make_unique<parallel::Topology>(*world,
                                              parallel::ParallelShape{ranks / (t * p), t, p});
}

parallel::ProcessGroup* data_parallel_group(parallel::ProcessGroup* world,
                                            const parallel::Topology* topology) {
  parallel::ProcessGroup* dp = topology != nullptr ? &topology->dp() : world;
  return dp != nullptr && dp->size() > 1 ? dp : nullptr;
}

models::TpLayout tp_layout(const parallel::Topology* topology, const TrainConfig& c) {
  if (topology == nullptr || topology->shape().tp == 1) return {};
  return {topology->shape().tp, topology->coords().tp, c.sequence_parallel};
}

models::PipelinePart pipeline_layout(const parallel::Topology* topology, const TrainConfig& c) {
  if (topology == nullptr || topology->shape().pp == 1) return {};
  return pipeline_part(c, topology->coords().pp);
}

}  // namespace

Trainer::Trainer(TrainConfig config, parallel::ProcessGroup* world)
    : config_(std::move(config)),
      world_(world != nullptr && world->size() > 1 ? world : nullptr),
      topology_(model_parallel_topology(world_, config_)),
      dp_(data_parallel_group(world_, topology_.get())),
      tp_(topology_ != nullptr && topology_->shape().tp > 1 ? &topology_->tp() : nullptr),
      pp_(topology_ != nullptr && topology_->shape().pp > 1 ? &topology_->pp() : nullptr),
      model_(config_.model, config_.precision, Device::cpu(),
             sharded_state(config_, dp_) && config_.zero.stage == 3
                 ? models::zero3_wte_chunks(config_.model, config_.tensor_parallel)
                 : 1,
             tp_layout(topology_.get(), config_), pipeline_layout(topology_.get(), config_)),
      full_registry_(models::build_gpt_registry(config_.model)) {
  if (pp_ != nullptr) {
    // Collective over the world, every rank in the same order.
    const parallel::RankCoords& at = topology_->coords();
    const int t = topology_->shape().tp;
    model_group_ = world_->split(at.dp, world_->rank());
    stage_group_ = world_->split(at.pp, world_->rank());
    const bool end_stage = at.pp == 0 || at.pp == pp_size() - 1;
    embedding_group_ = world_->split(end_stage ? at.dp * t + at.tp : -1, at.pp);
  }
  for (int c = 0; tp_ != nullptr && c < model_.num_stages(); ++c) {
    model_.stage(c).set_tensor_parallel(tp_);
  }
  if (config_.threads > 0) omp_set_num_threads(config_.threads);
  config_.resolve_batch(dp_size());
  if (config_.precision == DType::F16) scaler_.emplace(config_.loss_scaler);
  const DType dtype = config_.precision;
  const ParamRegistry& registry = model_.registry();
  const int64_t numel = registry.numel();
  const bool sharded = sharded_state(config_, dp_);
  std::vector<float> largest;  // fp16: of each parameter's initial values
  // Before anything large is allocated: refuse a run the machine cannot hold, on every rank.
  if (setting_int("TESSERA_SKIP_MEMORY_CHECK") == 0) {
    const auto check = [&] {
      const int thread_ranks =
          world_ != nullptr && world_->backend_name() == "thread" ? world_->size() : 1;
      check_memory_fits(config_, registry, dp_size(),
                        sharded && config_.zero.stage == 3
                            ? models::zero3_wte_chunks(config_.model, config_.tensor_parallel)
                            : 1,
                        ranks_on_this_machine(thread_ranks), available_memory_bytes());
      if (sharded) {
        check_pinned_fits(config_, registry, dp_size(), thread_ranks, lockable_memory_bytes());
        check_disk_fits(config_, registry, dp_size(), ranks_on_this_machine(thread_ranks));
      }
    };
    if (world_ == nullptr) {
      check();
    } else {
      parallel::run_agreed(*world_, check);
    }
  }
  // A resumed run reads its weights where a fresh one draws or loads them. A rank that fails
  // to read (a corrupt piece, a missing file) keeps going with zeros until every rank agrees
  // in restore_progress, so no rank is left waiting in a collective.
  std::unique_ptr<CheckpointReader> resume = open_resume();
  std::exception_ptr resume_error;
  const auto read_resumed = [&](int64_t begin, int64_t end, float* out) {
    try {
      resume->read(TensorKind::Master, registry, begin, end, out);
    } catch (...) {
      if (!resume_error) resume_error = std::current_exception();
      std::fill(out, out + (end - begin), 0.0f);
    }
  };
  state_ = std::make_unique<memory::FlatState>(dtype, sharded ? 0 : numel,
                                               memory::ShardRange{0, sharded ? 0 : numel});
  if (sharded) {
    // Stages 1-3: every rank builds only its own shard, from the seed or by reading its slice
    // of the checkpoint (every rank opens the file, as DeepSpeed's ranks do, and reads only
    // its part of the mapping); no rank ever holds the whole fp32 model. Stages 1-2 then
    // all-gather the working copy from the shards.
    memory::ZeroOptions options = config_.zero.options();
    options.dtype = dtype;
    // Pipeline stages sum the tied embedding's gradients after the reduction.
    options.copy_grads_as_reduced = pp_ == nullptr;
    // Called for the shard's sub-groups in order (one call when the states fit in memory).
    const memory::ShardInit init = [&](memory::ShardRange range, float* out) {
      if (resume != nullptr) {
        read_resumed(range.begin, range.end, out);
      } else if (config_.init_from.empty()) {
        init_params_range(registry, out, config_.seed, range.begin, range.end);
      } else {
        models::load_gpt_safetensors_range(config_.init_from, config_.model, registry, range.begin,
                                           range.end, out);
      }
      if (dtype == DType::F16) note_largest(registry, out, range, largest);
    };
    if (dp_ == nullptr) self_group_ = parallel::make_thread_world(1)[0];
    auto access = std::make_unique<memory::ShardedParamAccess>(
        registry, dp_ != nullptr ? *dp_ : *self_group_, options, init);
    sharded_ = access.get();
    access_ = std::move(access);
    if (dtype == DType::F16) {
      check_fp16_range(registry, std::move(largest),
                       pp_ != nullptr ? stage_group_.get() : (tp_ != nullptr ? world_ : dp_));
    }
  } else {
    // Stage 0 keeps the whole model: build it straight in its fp32 weights (the master copy
    // when training in 16 bits). The seed gives every rank the same model, so there is
    // nothing to send; a checkpoint is read by rank 0 alone (one reader, and the file need
    // exist only where rank 0 runs) and broadcast, agreed so a bad file fails every rank
    // with rank 0's message.
    float* weights = state_->master();
    if (resume != nullptr) {
      read_resumed(0, numel, weights);  // every rank reads its own copy
    } else if (config_.init_from.empty()) {
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
    // (With tensor parallelism each holds its part: all agree through the world, or, with
    // pipeline stages holding different layers, through the stage's ranks.)
    if (dtype == DType::F16) {
      note_largest(registry, weights, {0, numel}, largest);
      check_fp16_range(registry, std::move(largest),
                       pp_ != nullptr ? stage_group_.get() : (tp_ != nullptr ? world_ : nullptr));
    }
    flat_states_ = std::make_unique<memory::ResidentStateStore>(
        numel, config_.zero.sub_group_size, state_->master(), state_->exp_avg(),
        state_->exp_avg_sq());
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
  schedule_ = pp::make_schedule(config_.pipeline_schedule, pp_size(),
                                config_.gradient_accumulation_steps, config_.virtual_pipeline);
  pp::validate(schedule_);
  const pp::StageProgram& program = schedule_.programs[pp_rank()];
  for (int c = 0; c < model_.num_stages(); ++c) {
    models::Stage<float>& stage = model_.stage(c);
    stage.set_recompute(config_.recompute);
    stage.allocate(std::max(1, pp::slots_needed(program, c)), config_.micro_batch_size,
                   config_.seq_len);
  }
  if (pp_ != nullptr) links_ = std::make_unique<StageLinks>(*pp_);
  const size_t n = static_cast<size_t>(config_.gradient_accumulation_steps) *
                   config_.micro_batch_size * config_.seq_len;
  inputs_.resize(n);
  targets_.resize(n);
  if (resume != nullptr) restore_progress(*resume, resume_error);
  if (!config_.checkpoint.dir.empty()) {
    checkpointer_ = std::make_unique<Checkpointer>(config_.checkpoint, world_);
  }
}

std::unique_ptr<CheckpointReader> Trainer::open_resume() {
  const CheckpointConfig& k = config_.checkpoint;
  if (k.resume.empty()) {
    // A fresh run must not overwrite the checkpoints of another.
    TS_CHECK(k.dir.empty() || !has_latest(k.dir),
             "checkpoint.dir '{}' already holds checkpoints of a run: continue it with --resume "
             "latest, or set another checkpoint.dir",
             k.dir);
    return nullptr;
  }
  const bool latest = k.resume == "latest";
  TS_CHECK(!latest || !k.dir.empty(),
           "--resume latest needs checkpoint.dir (the folder holding the run's checkpoints)");
  // latest: a folder not made yet holds no checkpoint either.
  const std::string folder = latest && !std::filesystem::exists(k.dir)
                                 ? std::string()
                                 : resolve_checkpoint(latest ? k.dir : k.resume);
  if (folder.empty()) {
    TS_CHECK(latest, "--resume {}: no checkpoint there (no '{}' pointer, no {}): pass a step "
             "folder or a checkpoint.dir that holds one", k.resume, kLatestFile, kManifestFile);
    // The same command line starts a preemptible job and restarts it.
    log_rank0("checkpoint: none in {} yet, starting at step 0", k.dir);
    return nullptr;
  }
  auto reader = std::make_unique<CheckpointReader>(folder);
  const Manifest& m = reader->manifest();
  const models::GPTConfig& a = m.model;
  const models::GPTConfig& b = config_.model;
  TS_CHECK(a.n_layer == b.n_layer && a.n_head == b.n_head && a.n_embd == b.n_embd &&
               a.vocab_size == b.vocab_size && a.block_size == b.block_size,
           "checkpoint {} holds a model of {} layers, {} heads, {} dims, vocab {}, block {}; this "
           "config's has {}, {}, {}, {}, {}: resume with the model it was saved from",
           folder, a.n_layer, a.n_head, a.n_embd, a.vocab_size, a.block_size, b.n_layer, b.n_head,
           b.n_embd, b.vocab_size, b.block_size);
  const TrainingProgress& p = m.progress;
  TS_CHECK(p.micro_batch_size == config_.micro_batch_size && p.seq_len == config_.seq_len,
           "checkpoint {} was saved from micro-batches of {} x {} tokens, this run reads {} x {}: "
           "its data position cannot carry over; resume with the same "
           "train_micro_batch_size_per_gpu and data.seq_len",
           folder, p.micro_batch_size, p.seq_len, config_.micro_batch_size, config_.seq_len);
  TS_CHECK(p.consumed_micro_batches % dp_size() == 0,
           "checkpoint {} consumed {} micro-batches, which {} data-parallel ranks cannot share "
           "evenly: resume with a data-parallel size that divides it",
           folder, p.consumed_micro_batches, dp_size());
  const CheckpointLayout& l = m.layout;
  log_rank0("checkpoint: resuming from {} at step {} (saved at dp {}, tp {}, pp {}, v {}, ZeRO "
            "stage {}, {})",
            folder, p.step, l.dp, l.tp, l.pp, l.virtual_pp, l.zero_stage,
            dtype_name(l.precision));
  resumed_from_ = folder;
  return reader;
}

void Trainer::restore_progress(CheckpointReader& reader, std::exception_ptr weights_error) {
  const auto restore = [&] {
    if (weights_error) std::rethrow_exception(weights_error);
    const memory::OptimizerShard s = optimizer_shard();
    const ParamRegistry& registry = model_.registry();
    if (s.exp_avg != nullptr && s.exp_avg_sq != nullptr) {
      reader.read(TensorKind::ExpAvg, registry, s.range.begin, s.range.end, s.exp_avg);
      reader.read(TensorKind::ExpAvgSq, registry, s.range.begin, s.range.end, s.exp_avg_sq);
    } else {
      // On disk: sub-group by sub-group, so no more than one is ever in memory.
      const int64_t model_end = registry.numel();
      s.states->for_each_sub_group([&](const memory::SubGroupStates& g) {
        const int64_t begin = std::min(model_end, s.range.begin + g.range.begin);
        const int64_t end = std::min(model_end, s.range.begin + g.range.end);
        reader.read(TensorKind::ExpAvg, registry, begin, end, g.exp_avg);
        reader.read(TensorKind::ExpAvgSq, registry, begin, end, g.exp_avg_sq);
      });
    }
    reader.verify_share(TensorKind::Working, world_rank(), world_size());
    const TrainingProgress& p = reader.manifest().progress;
    if (scaler_) {
      if (p.loss_scaler) {
        scaler_->restore(*p.loss_scaler);
      } else {
        log_rank0("checkpoint: saved without fp16, so the loss scale starts afresh at {}",
                  scaler_->scale());
      }
    }
    steps_done_ = p.step;
    updates_done_ = p.optimizer_steps;
    last_lr_ = p.lr;
    train_loader_->seek(p.consumed_micro_batches / dp_size());
    if (p.shuffle != config_.shuffle || (p.shuffle && p.data_seed != config_.seed)) {
      log_rank0("checkpoint: saved with data.shuffle {} and seed {}, this run has {} and {}: the "
                "data order differs from the saved run's",
                p.shuffle, p.data_seed, config_.shuffle, config_.seed);
    }
  };
  if (world_ == nullptr) {
    restore();
  } else {
    parallel::run_agreed(*world_, restore);
  }
}

Manifest Trainer::checkpoint_header() const {
  Manifest m;
  m.model = config_.model;
  CheckpointLayout& l = m.layout;
  l.world = world_size();
  l.dp = dp_size();
  l.tp = tp_size();
  l.pp = pp_size();
  l.virtual_pp = config_.virtual_pipeline;
  l.zero_stage = sharded_ != nullptr ? sharded_->stage() : 0;
  l.sequence_parallel = tp_ != nullptr && config_.sequence_parallel;
  l.precision = config_.precision;
  TrainingProgress& p = m.progress;
  p.step = steps_done_;
  p.optimizer_steps = updates_done_;
  p.lr = last_lr_;
  if (scaler_) p.loss_scaler = scaler_->state();
  p.consumed_micro_batches = train_loader_->position() * dp_size();
  p.micro_batch_size = config_.micro_batch_size;
  p.seq_len = config_.seq_len;
  p.shuffle = config_.shuffle;
  p.data_seed = config_.seed;
  p.seed = config_.seed;
  for (const ParamSpec& t : full_registry_.params()) m.tensors.push_back({t.name, t.shape});
  for (int r = 0; r < world_size(); ++r) m.files.push_back(fmt::format("rank-{:05d}.bin", r));
  return m;
}

ShardImage Trainer::checkpoint_image() {
  const memory::OptimizerShard s = optimizer_shard();
  const ParamRegistry& registry = model_.registry();
  // What this rank writes: its optimizer shard, or at stage 0 (every data-parallel rank holds
  // everything) its 1/dp share, so the ranks write at once and each element once. Replicated
  // tensor-parallel parameters come from tensor-parallel rank 0, the tied head copy not at
  // all (it is wte's twin).
  const memory::ShardRange mine =
      sharded_ != nullptr ? s.range
                          : memory::ShardLayout(registry.numel(), dp_rank(), dp_size()).owned();
  std::vector<TensorKind> kinds = {TensorKind::Master, TensorKind::ExpAvg, TensorKind::ExpAvgSq};
  if (s.dtype != DType::F32) kinds.push_back(TensorKind::Working);
  struct Part {
    const ParamSpec* param;
    std::vector<LocalPiece> pieces;
  };
  std::vector<Part> parts;
  for (const ParamSpec& p : registry.params()) {
    if (p.name == "lm_head.weight") continue;
    if (tp_ != nullptr && p.split == TpSplit::None && tp_->rank() != 0) continue;
    const memory::ShardRange at = memory::intersect({p.offset, p.offset + p.numel()}, mine);
    if (at.numel() == 0) continue;
    parts.push_back({&p, local_pieces(p, at.begin - p.offset, at.end - p.offset)});
  }
  ShardImage image(fmt::format("rank-{:05d}.bin", world_rank()));
  const auto elem = [&](TensorKind kind) {
    return kind == TensorKind::Working ? dtype_size(s.dtype) : sizeof(float);
  };
  for (TensorKind kind : kinds) {
    for (const Part& part : parts) {
      for (const LocalPiece& piece : part.pieces) image.plan(piece.box.numel() * elem(kind));
    }
  }
  image.allocate(checkpointer_ != nullptr ? checkpointer_->take_spare_buffer() : Storage());
  for (TensorKind kind : kinds) {
    const char* base = kind == TensorKind::Master     ? reinterpret_cast<const char*>(s.master)
                       : kind == TensorKind::ExpAvg   ? reinterpret_cast<const char*>(s.exp_avg)
                       : kind == TensorKind::ExpAvgSq ? reinterpret_cast<const char*>(s.exp_avg_sq)
                                                      : static_cast<const char*>(s.params);
    for (const Part& part : parts) {
      for (const LocalPiece& piece : part.pieces) {
        const int64_t at = part.param->offset + piece.local_begin - s.range.begin;
        const std::string name = saved_tensor_name(*part.param);
        const DType dtype = kind == TensorKind::Working ? s.dtype : DType::F32;
        if (base != nullptr) {
          image.add(name, kind, dtype, piece.box, base + at * static_cast<int64_t>(elem(kind)));
        } else if (kind == TensorKind::Working) {
          // Parameters on disk.
          s.param_store->read(at, at + piece.box.numel(), image.add(name, kind, dtype, piece.box));
        } else {
          // A state on disk is read straight into the image.
          auto* into = static_cast<float*>(image.add(name, kind, dtype, piece.box));
          s.states->read(kind == TensorKind::Master   ? memory::StateKind::Master
                         : kind == TensorKind::ExpAvg ? memory::StateKind::ExpAvg
                                                      : memory::StateKind::ExpAvgSq,
                         at, at + piece.box.numel(), into);
        }
      }
    }
  }
  return image;
}

void Trainer::save_checkpoint() {
  TS_CHECK(checkpointer_ != nullptr, "save_checkpoint needs checkpoint.dir");
  checkpointer_->save(checkpoint_header(), checkpoint_image());
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
  s.states = flat_states_.get();
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
  if (tp_ == nullptr && pp_ == nullptr) {
    sum = sum_squares(0, s.range.numel());
  } else {
    for (const ParamSpec& p : model_.registry().params()) {
      if (!counts_in_norm(p)) continue;
      const memory::ShardRange part = memory::intersect({p.offset, p.offset + p.numel()}, s.range);
      if (part.numel() > 0) sum += sum_squares(part.begin - s.range.begin, part.numel());
    }
  }
  // Shards partition the model over the data-parallel ranks, tensor-parallel parts and
  // pipeline stages over their groups: the global sum of squares is the sum over the ranks
  // holding disjoint pieces. Gathered in f64 and added in rank order, so every rank gets the
  // same bits.
  parallel::ProcessGroup* pieces =
      sharded_ != nullptr ? (tp_ != nullptr || pp_ != nullptr ? world_ : dp_)
                          : (pp_ != nullptr ? model_group_.get() : tp_);
  if (pieces != nullptr) {
    std::vector<double> sums(pieces->size());
    pieces->all_gather(&sum, sums.data(), 1, DType::F64)->wait();
    sum = 0.0;
    for (double x : sums) sum += x;
  }
  return std::sqrt(sum);
}

bool Trainer::counts_in_norm(const ParamSpec& p) const {
  // A replicated parameter is the same on every tensor-parallel rank: group rank 0 counts it.
  if (tp_ != nullptr && p.split == TpSplit::None && tp_->rank() != 0) return false;
  // The head copy is wte's twin (their gradients are summed): wte counts for both.
  if (pp_ != nullptr && p.name == "lm_head.weight") return false;
  return true;
}

bool Trainer::any_rank(bool local) {
  if (world_ == nullptr) return local;
  float flag = local ? 1.0f : 0.0f;
  parallel::AllreduceOptions opts;
  opts.op = parallel::ReduceOp::Max;
  world_->all_reduce(&flag, 1, DType::F32, opts)->wait();
  return flag > 0.0f;
}

void Trainer::apply_update(double lr, double grad_scale) {
  const OptimizerConfig& o = config_.optimizer;
  const memory::OptimizerShard s = optimizer_shard();
  const std::vector<ParamSpec>& params = model_.registry().params();
  // Sub-group by sub-group (the states may be read from disk around each), and within one
  // per tensor, as decay depends on its shape: element-wise, so the bits do not depend on
  // the cut.
  // Parameters on disk, or on the device behind the host tier: written back sub-group by
  // sub-group from a buffer, else updated where they are.
  memory::ParamWriteBack* write_back = s.param_store;
  const void* grads = s.grads;
  if (s.host_tier != nullptr) {
    write_back = s.host_tier;
    grads = s.host_tier->host_grads();
  }
  const size_t working_bytes = dtype_size(s.dtype);
  s.states->for_each_sub_group([&](const memory::SubGroupStates& g) {
    const memory::ShardRange sub{s.range.begin + g.range.begin, s.range.begin + g.range.end};
    // The working parameters this sub-group's update writes, indexed from the shard's start:
    // in memory, or a write buffer holding just the sub-group.
    char* working = static_cast<char*>(s.params);
    if (write_back != nullptr) {
      working = static_cast<char*>(write_back->write_buffer(g.range.begin, g.range.end)) -
                g.range.begin * static_cast<int64_t>(working_bytes);
    }
    for (const ParamSpec& p : params) {
      const memory::ShardRange part = memory::intersect({p.offset, p.offset + p.numel()}, sub);
      if (part.numel() == 0) continue;
      const int64_t at = part.begin - s.range.begin;  // in the shard's gradients and params
      const int64_t in = part.begin - sub.begin;      // in the sub-group's states
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
      char* params_at = working + at * static_cast<int64_t>(working_bytes);
      if (s.dtype == DType::F32) {
        k::adamw_update(g.master + in, static_cast<const float*>(grads) + at, g.exp_avg + in,
                        g.exp_avg_sq + in, part.numel(), a);
        // The master is the working copy in memory; elsewhere it is written back as such.
        if (write_back != nullptr) {
          std::memcpy(params_at, g.master + in, static_cast<size_t>(part.numel()) * sizeof(float));
        }
      } else {
        k::adamw_update16(s.dtype, g.master + in, reinterpret_cast<uint16_t*>(params_at),
                          static_cast<const uint16_t*>(grads) + at, g.exp_avg + in,
                          g.exp_avg_sq + in, part.numel(), a);
      }
    }
    if (write_back != nullptr) write_back->commit(g.range.begin, g.range.end);
  });
  if (write_back != nullptr) write_back->flush();  // before anything reads the new values
  access_->after_update();
}

Trainer::WholeWeights Trainer::whole_weights() {
  WholeWeights mine = local_weights();
  if (tp_ == nullptr && pp_ == nullptr) return mine;
  // Every tensor-parallel rank's and pipeline stage's part, gathered over the ranks holding
  // one replica, then each element put where the whole parameter holds it (replicated
  // parameters from tensor-parallel rank 0, wte from the first stage; padding dropped).
  parallel::ProcessGroup& parts_group = pp_ != nullptr ? *model_group_ : *tp_;
  const int members = parts_group.size(), t = tp_size();
  // Member j of the group is tensor-parallel rank j % t of stage j / t (world-rank order).
  std::vector<ParamRegistry> registries;
  std::vector<size_t> counts;
  for (int j = 0; j < members; ++j) {
    models::TpLayout layout = tp_layout(topology_.get(), config_);
    layout.rank = j % t;
    const models::PipelinePart part =
        pp_ != nullptr ? pipeline_part(config_, j / t) : models::PipelinePart{};
    registries.push_back(models::build_gpt_registry(config_.model, model_.layers().wte_chunks,
                                                    part.active(), layout, part));
    counts.push_back(static_cast<size_t>(registries.back().numel()));
  }
  size_t total = 0;
  for (size_t c : counts) total += c;
  Storage parts(total * sizeof(float), MemCategory::Other, Device::cpu(), /*zero=*/false);
  const auto* all = static_cast<const float*>(parts.data());
  parts_group.all_gather_v(mine.data, parts.data(), counts, DType::F32)->wait();
  mine = WholeWeights{};  // the local copy is no longer needed
  WholeWeights w;
  w.gathered = Storage(static_cast<size_t>(full_registry_.numel()) * sizeof(float),
                       MemCategory::Other, Device::cpu(), /*zero=*/false);
  auto* whole = static_cast<float*>(w.gathered.data());
  size_t from_offset = 0;
  for (int j = 0; j < members; ++j) {
    const float* from = all + from_offset;
    from_offset += counts[j];
    for (const ParamSpec& p : registries[j].params()) {
      if (p.split == TpSplit::None && j % t != 0) continue;
      if (p.name == "lm_head.weight") continue;
      float* to = whole + full_registry_.params().at(static_cast<size_t>(p.init_id)).offset;
#pragma omp parallel for schedule(static)
      for (int64_t e = 0; e < p.numel(); ++e) {
        const int64_t at = p.whole_index(e);
        if (at >= 0) to[at] = from[p.offset + e];
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

int Trainer::virtual_stage(int chunk) const {
  return pp::virtual_stage(pp_rank(), chunk, pp_size());
}

bool Trainer::last_virtual(int chunk) const {
  return virtual_stage(chunk) == pp_size() * config_.virtual_pipeline - 1;
}

size_t Trainer::activation_count() const {
  return static_cast<size_t>(
             model_.stage().residual_rows(config_.micro_batch_size, config_.seq_len)) *
         config_.model.n_embd;
}

StepStats Trainer::step() {
  const auto start = std::chrono::steady_clock::now();
  const int accum = config_.gradient_accumulation_steps;
  const int B = config_.micro_batch_size, T = config_.seq_len;
  const size_t tokens = static_cast<size_t>(B) * T;
  const bool tracing = !config_.trace_file.empty() && steps_done_ + 1 == config_.trace_step;
  if (tracing) {
    trace_.clear();
    trace_.sync_origin(world_);
    trace_.set_enabled(true);
  }
  access_->zero_grads();
  // Every stage reads the same micro-batches (the first uses the inputs, the last the targets).
  for (int m = 0; m < accum; ++m) {
    train_loader_->next(inputs_.data() + m * tokens, targets_.data() + m * tokens);
  }
  // fp16 scales the loss (so the gradients) up to keep small gradients representable.
  step_loss_scale_ = scaler_ ? scaler_->scale() : 1.0;
  step_loss_ = 0.0;
  step_stats_.reset();
  try {
    run_program(schedule_.programs[pp_rank()], *this, &trace_);
  } catch (const std::exception& e) {
    // A failing stage ends the pipeline at once, with its reason: its neighbours would wait
    // for it otherwise, and no peer may read its send buffers once they are freed.
    if (pp_ != nullptr) pp_->abort(e.what());
    throw;
  }
  std::optional<StepStats>& stats = step_stats_;
  TS_CHECK(stats.has_value(), "schedule '{}' has no optimizer step", schedule_.name);
  stats->ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  // Tensor-parallel ranks and pipeline stages share their micro-batches: the tokens are the
  // data-parallel ranks'.
  stats->tokens_per_s = static_cast<double>(accum) * B * T * dp_size() / (stats->ms / 1000.0);
  if (tracing) {
    trace_.set_enabled(false);
    const parallel::RankCoords at =
        topology_ != nullptr ? topology_->coords() : parallel::RankCoords{dp_rank(), 0, 0};
    write_chrome_trace(config_.trace_file, trace_,
                       fmt::format("rank {} (pp {}, tp {}, dp {})", world_rank(), at.pp, at.tp,
                                   at.dp),
                       world_);
  }
  return *stats;
}

std::string Trainer::transfer_name(const char* what, const pp::Step& step, int from,
                                   int to) const {
  return fmt::format("{} of micro-batch {} from virtual stage {} to {}", what, step.micro_batch,
                     from, to);
}

void Trainer::forward(const pp::Step& s, int slot) {
  access_->begin_micro_batch(/*training=*/true, /*last=*/pp_ == nullptr &&
                                                    s.micro_batch ==
                                                        config_.gradient_accumulation_steps - 1);
  model_.stage(s.chunk).forward(*access_, slot, micro_batch_inputs(s.micro_batch),
                                config_.micro_batch_size, config_.seq_len);
}

void Trainer::backward(const pp::Step& s, int slot, bool last_of_chunk) {
  const int B = config_.micro_batch_size, T = config_.seq_len;
  models::Stage<float>& stage = model_.stage(s.chunk);
  // Pipelined, forwards of later micro-batches run between a micro-batch's forward and its
  // backward: the layouts that reduce once per step learn it at the backward.
  if (pp_ != nullptr) access_->begin_micro_batch(/*training=*/true, last_of_chunk);
  if (stage.has_head()) {
    step_loss_ += stage.head(*access_, slot, micro_batch_targets(s.micro_batch), B, T,
                             /*backward=*/true,
                             step_loss_scale_ / config_.gradient_accumulation_steps) /
                  static_cast<double>(micro_batch_tokens());
  }
  stage.backward(*access_, slot, micro_batch_inputs(s.micro_batch), B, T);
}

void Trainer::recv_activation(const pp::Step& s, int slot) {
  const int k = virtual_stage(s.chunk);
  links_->recv(model_.stage(s.chunk).input(slot), activation_count(), prev_rank(),
               transfer_name("activation", s, k - 1, k));
}

void Trainer::send_activation(const pp::Step& s, int slot) {
  const int k = virtual_stage(s.chunk);
  links_->send(model_.stage(s.chunk).output(slot), activation_count(), next_rank(),
               transfer_name("activation", s, k, k + 1));
}

void Trainer::recv_grad(const pp::Step& s) {
  const int k = virtual_stage(s.chunk);
  links_->recv(model_.stage(s.chunk).output_grad(), activation_count(), next_rank(),
               transfer_name("gradient", s, k + 1, k));
}

void Trainer::send_grad(const pp::Step& s) {
  const int k = virtual_stage(s.chunk);
  links_->send(model_.stage(s.chunk).input_grad(), activation_count(), prev_rank(),
               transfer_name("gradient", s, k, k - 1));
}

void Trainer::reduce_grads() {
  if (links_ != nullptr) links_->wait_sends();
  access_->finish_gradients();
  if (pp_ != nullptr) sum_tied_gradients();
}

void Trainer::optimizer_step() {
  step_stats_ = finish_step(step_loss_ / config_.gradient_accumulation_steps, step_loss_scale_);
}

void Trainer::sum_tied_gradients() {
  if (embedding_group_ == nullptr) return;  // a middle stage
  const ParamRegistry& registry = model_.registry();
  const memory::OptimizerShard s = optimizer_shard();
  const size_t esize = dtype_size(s.dtype);
  const bool first = pp_rank() == 0;
  for (const models::GptLayers::Tied& tied : model_.layers().tied_layers()) {
    const int64_t begin = registry.layer(first ? tied.wte_layer : tied.head_layer).begin;
    const int64_t end = begin + tied.elems;
    char* mine = static_cast<char*>(s.grads);
    if (sharded_ == nullptr) {
      // The whole reduced gradient is here: sum it with the other end's in place.
      embedding_group_->all_reduce(mine + begin * esize, static_cast<size_t>(tied.elems), s.dtype)
          ->wait();
      continue;
    }
    // Sharded: the two ends shard different registries, so the data-parallel ranks first
    // gather the tied rows whole, sum them with the other end's, and keep their piece.
    const memory::ShardLayout layout(registry.numel(), dp_->rank(), dp_->size());
    const memory::ShardRange piece = layout.piece(begin, end);
    const std::vector<size_t> counts = layout.counts(begin, end);
    Storage whole(static_cast<size_t>(tied.elems) * esize, MemCategory::Grads, Device::cpu(),
                  /*zero=*/false);
    char* at = piece.numel() > 0 ? mine + (piece.begin - s.range.begin) * esize : mine;
    dp_->all_gather_v(at, whole.data(), counts, s.dtype)->wait();
    embedding_group_->all_reduce(whole.data(), static_cast<size_t>(tied.elems), s.dtype)->wait();
    if (piece.numel() > 0) {
      std::memcpy(at, static_cast<char*>(whole.data()) + (piece.begin - begin) * esize,
                  static_cast<size_t>(piece.numel()) * esize);
    }
  }
}

StepStats Trainer::finish_step(double local_loss, double loss_scale) {
  if (gradient_hook_) {
    const memory::OptimizerShard shard = optimizer_shard();
    // The hook may change the gradients: the host tier copies them after it, not before.
    if (shard.host_tier != nullptr) shard.host_tier->forget_reported();
    gradient_hook_(steps_done_ + 1, shard);
  }
  double loss = dp_mean(local_loss);
  // Only the last stage computes the loss.
  if (pp_ != nullptr) {
    parallel::BroadcastOptions from_last;
    from_last.root = pp_size() - 1;
    pp_->broadcast(&loss, 1, DType::F64, from_last)->wait();
  }
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
  last_lr_ = lr;
  if (!s.skipped) {
    double clip_scale = 1.0;
    if (config_.gradient_clipping > 0.0 && norm > config_.gradient_clipping) {
      clip_scale = config_.gradient_clipping / (norm + 1e-6);
    }
    apply_update(lr, clip_scale / loss_scale);
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
    if (pp_ != nullptr) {
      sum += pipeline_eval_loss(inputs_.data(), targets_.data());
      continue;
    }
    access_->begin_micro_batch(/*training=*/false, /*last=*/false);
    sum += model_.forward(*access_, inputs_.data(), targets_.data(), B, T);
  }
  return sum / iters;
}

double Trainer::pipeline_eval_loss(const int32_t* inputs, const int32_t* targets) {
  const int B = config_.micro_batch_size, T = config_.seq_len;
  const size_t act = activation_count();
  access_->begin_micro_batch(/*training=*/false, /*last=*/false);
  // The virtual stages in order: each chunk waits for the one before it, wherever it runs.
  double loss = 0.0;
  for (int c = 0; c < model_.num_stages(); ++c) {
    models::Stage<float>& stage = model_.stage(c);
    const int k = virtual_stage(c);
    if (!first_virtual(c)) {
      links_->recv(stage.input(0), act, prev_rank(),
                   fmt::format("evaluation activation from virtual stage {} to {}", k - 1, k));
    }
    stage.forward(*access_, 0, inputs, B, T);
    if (last_virtual(c)) {
      loss = stage.head(*access_, 0, targets, B, T, /*backward=*/false, 0.0) /
             static_cast<double>(int64_t{B} * T);
    } else {
      links_->send(stage.output(0), act, next_rank(),
                   fmt::format("evaluation activation from virtual stage {} to {}", k, k + 1));
    }
  }
  links_->wait_sends();
  parallel::BroadcastOptions from_last;
  from_last.root = pp_size() - 1;
  pp_->broadcast(&loss, 1, DType::F64, from_last)->wait();
  return loss;
}

bool Trainer::run() {
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
  if (pp_ != nullptr) {
    std::string chunks;
    for (const auto& [b0, b1] : model_.part().chunks) {
      chunks += fmt::format("{}[{}, {})", chunks.empty() ? "" : " ", b0, b1);
    }
    const std::vector<int> bounds = pipeline_boundaries(config_);
    std::string all;
    for (size_t k = 0; k + 1 < bounds.size(); ++k) {
      all += fmt::format("{}{}", k == 0 ? "" : ",", bounds[k + 1] - bounds[k]);
    }
    log_rank0("pipeline parallel: {} stages x {} chunk(s) ({} backend), {} schedule over {} "
              "micro-batches, blocks per virtual stage {} ({}); simulated bubble {:.1f}%",
              pp_size(), config_.virtual_pipeline, pp_->backend_name(), schedule_.name,
              config_.gradient_accumulation_steps, all, config_.pipeline_partition,
              100.0 * pp::simulate(schedule_).bubble_fraction);
    spdlog::info("pipeline stage {}: blocks {}", pp_rank(), chunks);
  }
  if (replicated_ != nullptr) {
    log_rank0("data parallel: {} ranks ({} backend), gradients in {} all-reduce bucket(s)",
              dp_size(), dp_->backend_name(), replicated_->num_buckets());
  }
  if (sharded_ != nullptr) {
    log_rank0("ZeRO stage {}: {} rank{} ({} backend), gradients in {} reduce-scatter bucket(s){}",
              sharded_->stage(), dp_size(), dp_size() > 1 ? "s" : "",
              dp_ != nullptr ? dp_->backend_name() : self_group_->backend_name(),
              sharded_->num_buckets(),
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
  if (sharded_ != nullptr && config_.zero.offload_optimizer.device != memory::OffloadDevice::None) {
    const memory::StateStore& states = *sharded_->shard().states;
    const auto* nvme = dynamic_cast<const memory::NvmeStateStore*>(&states);
    if (nvme != nullptr) {
      log_rank0("offload: optimizer states on disk in {} ({}, {}): {} sub-groups of {} elements, "
                "{} in memory ({}), swap file {} per rank{}",
                config_.zero.offload_optimizer.nvme_path,
                memory::offload::io_backend_name(nvme->file().backend()),
                nvme->file().direct() ? "O_DIRECT" : "buffered", states.num_sub_groups(),
                states.sub_group_elems(), nvme->slots(), format_bytes(states.buffer_bytes()),
                format_bytes(states.disk_bytes()),
                config_.zero.offload_optimizer.pipeline_read ||
                        config_.zero.offload_optimizer.pipeline_write
                    ? fmt::format(", read ahead {}, write behind {}",
                                  config_.zero.offload_optimizer.pipeline_read ? "on" : "off",
                                  config_.zero.offload_optimizer.pipeline_write ? "on" : "off")
                    : "");
    } else if (const memory::HostTier* host = sharded_->shard().host_tier) {
      log_rank0("offload: optimizer states in the host tier ({} copies{}): {} per rank in its "
                "pool, gradients copied to the host as each bucket is reduced{}, the optimizer "
                "steps through {} sub-group(s) of {} elements writing each back",
                host->engine_name(),
                config_.zero.offload_optimizer.pin_memory ? ", page-locked" : "",
                format_bytes(host->pinned_bytes()),
                pp_ != nullptr ? " (under pipeline parallelism: when the optimizer asks)" : "",
                states.num_sub_groups(), states.sub_group_elems());
    } else {
      log_rank0("offload: optimizer device cpu with the parameters on disk: the states stay in "
                "host memory; the optimizer steps through {} sub-group(s) of {} elements",
                states.num_sub_groups(), states.sub_group_elems());
    }
  }
  if (sharded_ != nullptr && sharded_->shard().param_store != nullptr) {
    const memory::NvmeParamStore& store = *sharded_->shard().param_store;
    log_rank0("offload: parameters on disk in {} ({}, {}): {} of the shard's elements stay in "
              "memory (max_in_cpu), {} read buffers, {} in memory, swap file {} per rank",
              config_.zero.offload_param.nvme_path,
              memory::offload::io_backend_name(store.file().backend()),
              store.file().direct() ? "O_DIRECT" : "buffered", store.resident_elems(),
              store.buffer_count(), format_bytes(store.memory_bytes()),
              format_bytes(store.disk_bytes()));
  } else if (config_.zero.offload_param.device == memory::OffloadDevice::Cpu) {
    log_rank0("offload: parameter device cpu: on the CPU backend the parameters are in host "
              "memory already");
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
  metrics_options.resume_after_step = steps_done_;
  MetricsLogger metrics(metrics_options);
  // With checkpoints, SIGTERM (a preempted Slurm job) and SIGINT finish the step and save.
  std::optional<StopSignals> signals;
  if (checkpointer_ != nullptr) signals.emplace();
  bool stopped = false;
  while (steps_done_ < config_.steps) {
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
    if (checkpointer_ == nullptr) continue;
    const int64_t interval = config_.checkpoint.save_interval;
    const bool saved = last || (interval > 0 && s.step % interval == 0);
    if (saved) save_checkpoint();
    if (checkpointer_->poll() && !last) {
      log_rank0("checkpoint: {} received, stopping after step {}",
                StopSignals::signal_number() == SIGINT ? "SIGINT" : "SIGTERM", s.step);
      if (!saved) save_checkpoint();
      stopped = true;
      break;
    }
  }
  if (checkpointer_ != nullptr) checkpointer_->flush();
  metrics.finish();
  if (stopped) return false;
  log_rank0("memory: {}", format_memory(MemoryTracker::current().snapshot()));
  const std::string weights_file = (fs::path(config_.output_dir) / "model.safetensors").string();
  if (world_ == nullptr && sharded_ != nullptr) {
    // One rank with a partitioned state (offload): tensor by tensor from where the weights
    // live, so the save holds one tensor, not a whole fp32 model beside the run.
    models::save_gpt_safetensors(weights_file, config_.model, full_registry_,
                                 [this](int64_t begin, int64_t end, float* out) {
                                   sharded_->read_weights(begin, end, out);
                                 });
    log_rank0("saved {} (and config.json beside it)", weights_file);
    return true;
  }
  const WholeWeights weights_now = whole_weights();  // collective at stages 1-3
  if (writer) {
    models::save_gpt_safetensors(weights_file, config_.model, full_registry_, weights_now.data);
    log_rank0("saved {} (and config.json beside it)", weights_file);
  }
  return true;
}

}  // namespace tessera::engine
