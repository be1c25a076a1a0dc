// `tessera estimate`: per-rank memory of a model at a ZeRO stage, data-parallel rank count and
// tensor-parallel size, from the same planning code the runtime allocates by
// (memory/zero/zero_plan.h over the rank's local registry, GPT's activation layout), so for
// shapes that run here the estimate equals the measurement.
#include <iostream>

#include <fmt/format.h>

#include "launch/commands.h"
#include "memory/offload/nvme_state_store.h"
#include "memory/zero/zero_plan.h"
#include "models/gpt.h"
#include "runtime/core/error.h"
#include "runtime/core/memory_stats.h"

namespace tessera::launch {
namespace {

// The formula's figure: offload moves the optimizer states (and their update) off the
// accelerator, or with nvme out of memory.
void print_offload(const std::string& offload, int64_t optimizer_bytes, int64_t total) {
  if (offload == "none") return;
  std::cout << fmt::format("with --offload {}: {} stays in {} memory, {} of optimizer states "
                           "move to {} (without the sub-group buffers: give --model for them)\n",
                           offload, format_bytes(total - optimizer_bytes),
                           offload == "cpu" ? "device" : "host",
                           format_bytes(optimizer_bytes),
                           offload == "cpu" ? "host memory" : "the NVMe swap file");
}

}  // namespace

memory::ZeroOptions estimate_zero_options(const EstimateOptions& o) {
  memory::ZeroOptions z;
  z.stage = o.stage;
  z.dtype = parse_dtype(o.dtype);
  z.reduce_bucket_elems = o.reduce_bucket_size;
  z.prefetch_elems = o.prefetch_bucket_size;
  z.persistence_threshold = o.param_persistence_threshold;
  z.max_live_elems = o.max_live_parameters;
  z.sub_group_elems = o.sub_group_size;
  z.offload_optimizer.device = o.offload == "cpu"    ? memory::OffloadDevice::Cpu
                               : o.offload == "nvme" ? memory::OffloadDevice::Nvme
                                                     : memory::OffloadDevice::None;
  z.offload_optimizer.buffer_count = o.buffer_count;
  z.offload_param.device = o.offload_param == "cpu"    ? memory::OffloadDevice::Cpu
                           : o.offload_param == "nvme" ? memory::OffloadDevice::Nvme
                                                       : memory::OffloadDevice::None;
  z.offload_param.buffer_count = o.param_buffer_count;
  z.offload_param.buffer_size = o.param_buffer_size;
  z.offload_param.max_in_cpu = o.max_in_cpu;
  return z;
}

int run_estimate(const EstimateOptions& o) {
  TS_CHECK(o.ranks >= 1, "--ranks must be >= 1, got {}", o.ranks);
  TS_CHECK(o.stage >= 0 && o.stage <= 3, "--stage {} does not exist: use 0, 1, 2 or 3", o.stage);
  TS_CHECK(o.offload == "none" || o.offload == "cpu" || o.offload == "nvme",
           "--offload {} is unknown: use none, cpu or nvme", o.offload);
  TS_CHECK(o.offload == "none" || o.stage >= 1,
           "--offload {} moves the optimizer's shard, which stage 0 does not have: give --stage "
           "1, 2 or 3",
           o.offload);
  TS_CHECK(o.offload_param == "none" || o.offload_param == "cpu" || o.offload_param == "nvme",
           "--offload-param {} is unknown: use none, cpu or nvme", o.offload_param);
  TS_CHECK(o.offload_param == "none" || o.stage == 3,
           "--offload-param {} moves stage 3's parameter shard: give --stage 3", o.offload_param);
  TS_CHECK(o.offload_param != "nvme" || !o.model.empty(),
           "--offload-param nvme needs --model PRESET: its read buffers are sized by the layers");
  TS_CHECK(o.sub_group_size >= 1, "--sub-group-size must be >= 1, got {}", o.sub_group_size);
  TS_CHECK(o.dtype == "f32" || o.dtype == "bf16" || o.dtype == "f16",
           "--dtype {} is unknown: use f32, bf16 or f16", o.dtype);
  TS_CHECK(o.model.empty() != (o.params <= 0), "give exactly one of --model PRESET or --params N");
  TS_CHECK(o.recompute == "none" || o.recompute == "full" || o.recompute == "selective",
           "--recompute {} is unknown: use none, full or selective", o.recompute);
  TS_CHECK(o.recompute_num_layers >= 1, "--recompute-num-layers must be >= 1, got {}",
           o.recompute_num_layers);
  TS_CHECK(o.tp >= 1, "--tp must be >= 1, got {}", o.tp);
  TS_CHECK(!o.sequence_parallel || o.tp > 1,
           "--sequence-parallel splits the sequence over tensor-parallel ranks: give --tp > 1");
  // Without a preset there are no shapes to split: which parameters are replicated depends on
  // them.
  TS_CHECK(o.tp == 1 || !o.model.empty(),
           "--tp {} needs --model PRESET: tensor parallelism splits each layer by its shape",
           o.tp);
  models::RecomputePolicy recompute;
  recompute.granularity = o.recompute == "full"        ? models::RecomputeGranularity::Full
                          : o.recompute == "selective" ? models::RecomputeGranularity::Selective
                                                       : models::RecomputeGranularity::None;
  recompute.num_layers = o.recompute_num_layers;
  const memory::ZeroOptions z = estimate_zero_options(o);
  auto row = [](const char* what, int64_t bytes, const std::string& note = "") {
    std::cout << fmt::format("  {:<12} {:>12}  {}\n", what, format_bytes(bytes), note);
  };
  const int rank = 0;  // the first rank: with padding at the end it holds a full shard
  const bool half = o.dtype != "f32";
  if (o.model.empty()) {
    // The paper's per-parameter bytes: without a preset there is no layer structure, so this
    // is the planning figure without tessera's bucket slots and persistent layers.
    const double psi = static_cast<double>(o.params > 0 ? o.params
                                                        : models::gpt_preset(o.model).num_params());
    const double n = o.ranks;
    const double p = (half ? 2 : 4) * psi / (o.stage >= 3 ? n : 1);
    const double g = (half ? 2 : 4) * psi / (o.stage >= 2 ? n : 1);
    const double opt = (half ? 12 : 8) * psi / (o.stage >= 1 ? n : 1);
    std::cout << fmt::format("{:.1f}M parameters, ZeRO stage {}, {} rank{}, {} (formula: {} + {} "
                             "+ {} bytes per parameter, divided as the stage prescribes)\n",
                             psi / 1e6, o.stage, o.ranks, o.ranks == 1 ? "" : "s", o.dtype, half ? 2 : 4, half ? 2 : 4,
                             half ? 12 : 8);
    row("params", static_cast<int64_t>(p));
    row("grads", static_cast<int64_t>(g));
    row("optimizer", static_cast<int64_t>(opt), half ? "(fp32 master + Adam m, v)" : "(Adam m, v)");
    row("total", static_cast<int64_t>(p + g + opt));
    print_offload(o.offload, static_cast<int64_t>(opt), static_cast<int64_t>(p + g + opt));
    return 0;
  }
  const models::GPTConfig config = models::gpt_preset(o.model);
  try {
    models::check_tensor_parallel(config, o.tp);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(fmt::format("--tp {} with --model {}: {}", o.tp, o.model, e.what()));
  }
  // As the trainer lays the model out: the rank's part of every layer (tensor-parallel rank 0:
  // every rank holds the same shapes), ZeRO over the data-parallel group, and stage 3 on
  // several data-parallel ranks chunks a large word embedding (of the rank's vocabulary slice).
  const models::TpLayout tp{o.tp, 0, o.sequence_parallel};
  const bool partitioned = memory::plan_partitioned(z, o.ranks);
  const int wte_chunks =
      o.stage == 3 && partitioned ? models::zero3_wte_chunks(config, o.tp) : 1;
  const ParamRegistry registry = models::build_gpt_registry(config, wte_chunks, false, tp);
  const memory::ModelStateBytes b = memory::plan_model_state(registry, z, rank, o.ranks);
  if (o.tp == 1) {
    std::cout << fmt::format("{} ({:.1f}M parameters), ZeRO stage {}, {} rank{}, {}, per rank:\n",
                             o.model, registry.numel() / 1e6, o.stage, o.ranks,
                             o.ranks == 1 ? "" : "s", o.dtype);
  } else {
    std::cout << fmt::format(
        "{} ({:.1f}M parameters, {:.1f}M on each tensor-parallel rank), ZeRO stage {}, ranks: "
        "{} data-parallel x {} tensor-parallel = {}{}, {}, per rank:\n",
        o.model, config.num_params() / 1e6, registry.numel() / 1e6, o.stage, o.ranks, o.tp,
        int64_t{o.ranks} * o.tp, o.sequence_parallel ? " (sequence parallel)" : "", o.dtype);
    const models::GptLayers layers(config, 1, false, tp);
    std::cout << fmt::format("  vocabulary {} padded to {} (a multiple of 128 x {}): {} rows "
                             "of the word embedding per tensor-parallel rank\n",
                             config.vocab_size, models::padded_vocab(config.vocab_size, o.tp),
                             o.tp, layers.vocab_rows);
  }
  if (z.params_on_disk()) {
    row("params", b.params,
        fmt::format("(offload_param nvme: max_in_cpu part, {} read buffers, 2 write buffers{})",
                    z.offload_param.buffer_count,
                    b.fixed.persistent_param_bytes > 0
                        ? fmt::format(", {} whole small layers",
                                      format_bytes(b.fixed.persistent_param_bytes))
                        : ""));
  } else {
  row("params", b.params,
      b.fixed.persistent_param_bytes + b.fixed.padding_param_bytes > 0
          ? fmt::format("(incl. {} whole small layers / padding)",
                        format_bytes(b.fixed.persistent_param_bytes + b.fixed.padding_param_bytes))
          : "");
  }
  row("grads", b.grads,
      z.host_tier() ? "(the device's shard and its host copy)"
      : b.fixed.grad_bucket_bytes + b.fixed.padding_grad_bytes > 0
          ? fmt::format("(incl. {} bucket slots / padding)",
                        format_bytes(b.fixed.grad_bucket_bytes + b.fixed.padding_grad_bytes))
          : "");
  const char* states = half ? "fp32 master + Adam m, v" : "Adam m, v";
  if (z.offload_optimizer.device == memory::OffloadDevice::Nvme) {
    const int64_t shard = partitioned ? memory::shard_range(registry.numel(), rank, o.ranks).numel()
                                      : registry.numel();
    const auto swap = memory::NvmeStateStore::plan(shard, z.effective_sub_group_elems(),
                                                   !half && !z.params_on_disk(),
                                                   z.offload_optimizer);
    row("optimizer", b.optimizer,
        fmt::format("({} sub-group buffers of {}: {}{})", swap.slots,
                    format_bytes(swap.record_bytes), states,
                    half || z.params_on_disk() ? "" : "; master = params"));
  } else if (z.host_tier()) {
    row("optimizer", b.optimizer, "(fp32 master + Adam m, v in the host tier's page-locked pool)");
  } else {
    row("optimizer", b.optimizer, fmt::format("({})", states));
  }
  int64_t total = b.total();
  if (o.batch > 0) {
    const int seq = o.seq > 0 ? o.seq : config.block_size;
    const int64_t acts = models::GPT<float>::activation_bytes_for(config, o.batch, seq, z.dtype,
                                                                  recompute, wte_chunks, tp);
    row("activations", acts,
        fmt::format("(micro-batch {} x {}{}{})", o.batch, seq,
                    o.recompute == "none" ? "" : ", recompute " + o.recompute,
                    o.sequence_parallel ? ", sequence parallel" : ""));
    total += acts;
  }
  if (o.stage == 3 && partitioned) {
    const int64_t gathered = memory::plan_gathered_bytes(registry, z, o.ranks);
    const std::string chunks =
        wte_chunks > 1 ? fmt::format("; word embedding in {} chunks", wte_chunks) : "";
    row("gathered", gathered,
        z.params_on_disk() && o.ranks == 1
            ? "(stage 3 on one rank with parameters on disk: the read buffers, in params" +
                  chunks + ")"
            : "(stage 3: the layer in use + prefetch, within max live" + chunks + ")");
    total += gathered;
  }
  // What every tessera process holds before it allocates (the libraries: on a CPU machine
  // mostly cuBLAS's, which the CUDA backend links): measured in this process, the same binary.
  const int64_t process = o.process_bytes >= 0 ? o.process_bytes : process_resident_bytes();
  if (process > 0) {
    row("process", process, "(code and libraries, resident before allocating: measured here)");
    total += process;
  }
  row("total", total);
  if (b.pinned > 0) {
    row("pinned", b.pinned,
        "(of the total: the host tier's page-locked pool; on the CUDA backend this part is host "
        "memory, the rest device memory)");
  }
  if (b.disk > 0) {
    const bool optimizer = z.offload_optimizer.device == memory::OffloadDevice::Nvme;
    row("disk", b.disk,
        optimizer && z.params_on_disk()
            ? "(swap files: the optimizer's in offload_optimizer.nvme_path, the parameters' in "
              "offload_param.nvme_path)"
        : optimizer ? "(the optimizer's swap file in offload_optimizer.nvme_path)"
                    : "(the parameters' swap file in offload_param.nvme_path)");
  }
  return 0;
}

}  // namespace tessera::launch
