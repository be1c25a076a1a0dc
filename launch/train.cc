// `tessera train`: one rank, thread ranks (--sim-ranks), or MPI ranks (under mpirun /
// `tessera launch`); train, then print a sample when the config asks for one.
#include <omp.h>

#include <algorithm>
#include <iostream>
#include <thread>

#include "launch/byte_tokenizer.h"
#include "launch/commands.h"
#include "launch/printable.h"
#include "launch/rank_env.h"
#include "models/sampler.h"
#include "parallel/comm/mpi_group.h"
#include "parallel/comm/thread_group.h"
#include "runtime/core/logging.h"
#include "runtime/engine/trainer.h"

namespace tessera::launch {
namespace {

void train_one_rank(const engine::TrainConfig& config, parallel::ProcessGroup* dp) {
  engine::Trainer trainer(config, dp);
  // Stopped by SIGTERM / SIGINT: the step was saved; the run is not over, so no sample.
  if (!trainer.run()) return;
  const engine::TrainConfig& c = trainer.config();
  if (c.sample_tokens <= 0) return;
  // Every rank takes part in assembling the weights (a gather at ZeRO stage 3); rank 0 then
  // samples alone from its whole copy, so no collective waits on ranks that have finished.
  const engine::Trainer::WholeWeights weights = trainer.whole_weights();
  if (trainer.world_rank() == 0) {
    // Sampling only reads the weights: the view's const is dropped for ParamAccess's sake.
    LocalParamAccess whole(trainer.full_registry(), const_cast<float*>(weights.data), nullptr,
                           sizeof(float));
    models::SampleOptions so;
    so.max_new_tokens = c.sample_tokens;
    so.temperature = c.sample_temperature;
    so.top_k = c.sample_top_k;
    so.seed = c.seed;
    const std::vector<int32_t> out =
        models::sample_tokens(c.model, whole, encode_bytes(c.sample_prompt), so);
    log_rank0("sample ({} tokens, temperature {}, top-k {}):", out.size(), so.temperature,
              so.top_k);
    std::cout << printable_text(c.sample_prompt + decode_bytes(out)) << std::endl;
  }
}

}  // namespace

// Ranks sharing a machine split its cores: OpenMP's default (every core per process) would
// oversubscribe them, and spinning threads then fight each other.
int default_threads_per_rank(int local_ranks) {
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  return std::max(1, cores / std::max(1, local_ranks));
}

int run_train(const TrainOptions& opts) {
  // The command line's parallelism flags are overrides like any other, checked by the parser.
  std::vector<std::string> overrides = opts.overrides;
  if (opts.tp > 0) {
    overrides.push_back(fmt::format("parallelism.tensor_model_parallel_size={}", opts.tp));
  }
  if (opts.sequence_parallel) overrides.push_back("parallelism.sequence_parallel=true");
  if (opts.pp > 0) {
    overrides.push_back(fmt::format("parallelism.pipeline_model_parallel_size={}", opts.pp));
  }
  if (opts.virtual_pp > 0) {
    overrides.push_back(
        fmt::format("parallelism.virtual_pipeline_model_parallel_size={}", opts.virtual_pp));
  }
  if (!opts.resume.empty()) {
    overrides.push_back(fmt::format("checkpoint.resume={}", opts.resume));
  }
  if (!opts.schedule.empty()) {
    overrides.push_back(fmt::format("parallelism.pipeline_schedule={}", opts.schedule));
  }
  engine::TrainConfig config = engine::load_train_config(opts.config_path, overrides);
  const RankEnv env = detect_rank_env();
  if (opts.sim_ranks > 0) {
    TS_CHECK(env.world == 1, "--sim-ranks runs thread ranks in one process, but this process "
             "is rank {} of {} ({}): use one or the other", env.rank, env.world, env.source);
    log_rank0("thread ranks: {} ranks in this process", opts.sim_ranks);
    const int threads = config.threads > 0 ? config.threads : default_threads_per_rank(opts.sim_ranks);
    parallel::spawn_ranks(opts.sim_ranks, [&](parallel::ProcessGroup& group) {
      set_thread_rank(group.rank());
      MemoryTracker tracker;  // each rank's memory is its own
      ScopedTracker scoped(tracker);
      omp_set_num_threads(threads);
      train_one_rank(config, &group);
    });
    return 0;
  }
  if (env.world == 1) {
    train_one_rank(config, nullptr);
    return 0;
  }
  init_logging(env.rank, env.world);
  if (config.threads == 0) config.threads = default_threads_per_rank(env.local_size);
  log_rank0("ranks: {} processes, rank and world from {}", env.world, env.source);
  parallel::mpi_init(nullptr, nullptr);
  parallel::ProcessGroupPtr world = parallel::make_mpi_world();
  TS_CHECK(world->size() == env.world && world->rank() == env.rank,
           "MPI says rank {} of {}, but {} says rank {} of {}: start the job with mpirun or "
           "`tessera launch`",
           world->rank(), world->size(), env.source, env.rank, env.world);
  try {
    train_one_rank(config, world.get());
  } catch (const std::exception& e) {
    // One rank failing must not leave the others blocked in a collective: end the job.
    spdlog::error("rank {}: {}", env.rank, e.what());
    parallel::mpi_abort(e.what(), 1);
  }
  world.reset();
  parallel::mpi_finalize();
  return 0;
}

}  // namespace tessera::launch
