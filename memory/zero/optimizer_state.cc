#include "memory/zero/optimizer_state.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "memory/offload/nvme_state_store.h"
#include "memory/precision.h"
#include "parallel/comm/agree.h"
#include "runtime/core/error.h"
#include "runtime/core/memcpy_copy_engine.h"

namespace tessera::memory {

ShardInit init_from_full(const float* full) {
  return [full](ShardRange range, float* out) {
    if (range.numel() > 0) {
      std::memcpy(out, full + range.begin, static_cast<size_t>(range.numel()) * sizeof(float));
    }
  };
}

namespace {

ZeroOptions stage_options(int stage, DType dtype) {
  ZeroOptions o;
  o.stage = stage;
  o.dtype = dtype;
  return o;
}

}  // namespace

ShardedOptimizerState::ShardedOptimizerState(const ParamRegistry& registry,
                                             parallel::ProcessGroup& group, int stage, DType dtype,
                                             const ShardInit& init)
    : ShardedOptimizerState(registry, group, stage_options(stage, dtype), init) {}

ShardedOptimizerState::ShardedOptimizerState(const ParamRegistry& registry,
                                             parallel::ProcessGroup& group,
                                             const ZeroOptions& options, const ShardInit& init)
    : group_(group),
      stage_(options.stage),
      dtype_(options.dtype),
      elem_size_(dtype_size(options.dtype)),
      layout_(registry.numel(), group.rank(), group.size()) {
  TS_CHECK(stage_ >= 1 && stage_ <= 3, "ZeRO's sharded optimizer state is for stages 1-3, not {}",
           stage_);
  check_working_dtype(dtype_);
  const int64_t S = layout_.shard.numel();
  const bool params_on_disk = options.params_on_disk();
  // Aligned for the parameters' swap file when they are on disk; the update is
  // element-wise, so the cut changes no bits.
  const int64_t sub_group_elems = options.effective_sub_group_elems();
  if (!params_on_disk) {
    params_ = Storage((stage_ <= 2 ? layout_.padded : S) * elem_size_, MemCategory::Params);
  }
  grads_ = Storage((stage_ == 1 ? layout_.padded : S) * elem_size_, MemCategory::Grads);
  // In f32 the master weights are the working shard itself, which stays in memory (unless
  // the working shard is on disk or on the device: then the master is a state of its own).
  master_apart_ = is_16bit(dtype_) || params_on_disk || options.host_tier();
  float* working_fp32 = master_apart_ ? nullptr : static_cast<float*>(param_shard());
  const int agreed_rank = group.rank();
  parallel::run_agreed(group, [&] {
    if (params_on_disk) {
      int64_t largest_piece = 0;
      for (int l = 0; l < registry.num_layers(); ++l) {
        const LayerRange& r = registry.layer(l);
        largest_piece = std::max(largest_piece, layout_.piece(r.begin, r.end).numel());
      }
      param_store_ = std::make_unique<NvmeParamStore>(
          S, dtype_, largest_piece, std::min(sub_group_elems, S), options.offload_param,
          options.aio, fmt::format("tessera-params-r{}", agreed_rank));
    }
    if (options.host_tier()) {
      CopyEngine* engine = options.copy_engine;
      if (engine == nullptr) {
        MemcpyCopyEngine::Options twin;
        twin.lock_host = options.offload_optimizer.pin_memory;
        own_engine_ = std::make_unique<MemcpyCopyEngine>(twin);
        engine = own_engine_.get();
      }
      host_tier_ = std::make_unique<HostTier>(*engine, S, dtype_, sub_group_elems, grad_shard(),
                                              param_shard());
      states_ = std::make_unique<ResidentStateStore>(
          S, sub_group_elems, host_tier_->state(StateKind::Master),
          host_tier_->state(StateKind::ExpAvg), host_tier_->state(StateKind::ExpAvgSq));
      return;
    }
    if (options.offload_optimizer.device == OffloadDevice::Nvme) {
      states_ = std::make_unique<NvmeStateStore>(S, sub_group_elems, working_fp32,
                                                 options.offload_optimizer, options.aio,
                                                 fmt::format("tessera-optimizer-r{}", agreed_rank));
      return;
    }
    if (working_fp32 == nullptr) master_ = Storage(S * sizeof(float), MemCategory::Optimizer);
    exp_avg_ = Storage(S * sizeof(float), MemCategory::Optimizer);
    exp_avg_sq_ = Storage(S * sizeof(float), MemCategory::Optimizer);
    states_ = std::make_unique<ResidentStateStore>(
        S, sub_group_elems,
        working_fp32 != nullptr ? working_fp32 : static_cast<float*>(master_.data()),
        static_cast<float*>(exp_avg_.data()), static_cast<float*>(exp_avg_sq_.data()));
  });

  // The fp32 values land where they live, sub-group by sub-group: the master shard beside
  // 16-bit working weights (rounded into them as each sub-group is made), the working shard
  // itself in f32. The padding stays zero.
  const ShardRange owned = layout_.owned();
  const int64_t first = layout_.shard.begin;
  // The working parameters that do not live where the update can write them directly.
  ParamWriteBack* write_back =
      param_store_ != nullptr ? static_cast<ParamWriteBack*>(param_store_.get()) : host_tier_.get();
  parallel::run_agreed(group, [&] {
    states_->for_each_sub_group(
        [&](const SubGroupStates& g) {
          const ShardRange mine = intersect({first + g.range.begin, first + g.range.end}, owned);
          if (mine.numel() > 0) init(mine, g.master + (mine.begin - first - g.range.begin));
          if (write_back != nullptr) {
            void* to = write_back->write_buffer(g.range.begin, g.range.end);
            if (is_16bit(dtype_)) {
              store_working(dtype_, g.master, to, g.range.numel());
            } else {
              std::memcpy(to, g.master, static_cast<size_t>(g.range.numel()) * sizeof(float));
            }
            write_back->commit(g.range.begin, g.range.end);
          } else if (is_16bit(dtype_)) {
            store_working(dtype_, g.master, elem(params_, (stage_ <= 2 ? first : 0) + g.range.begin),
                          g.range.numel());
          }
        },
        SubGroupAccess::Overwrite);
    if (write_back != nullptr) write_back->flush();
  });
  // Stages 1-2 train on whole parameters: the same gather as after every update.
  if (stage_ <= 2) publish_update();
}

void* ShardedOptimizerState::full_params() const {
  TS_CHECK(stage_ <= 2, "stage {} keeps no whole parameters", stage_);
  return params_.data();
}

void* ShardedOptimizerState::param_shard() const {
  if (param_store_ != nullptr) return nullptr;
  return elem(params_, stage_ <= 2 ? layout_.shard.begin : 0);
}

void* ShardedOptimizerState::full_grads() const {
  TS_CHECK(stage_ == 1, "stage {} keeps no whole gradients", stage_);
  return grads_.data();
}

void* ShardedOptimizerState::grad_shard() const {
  return elem(grads_, stage_ == 1 ? layout_.shard.begin : 0);
}

OptimizerShard ShardedOptimizerState::shard() {
  OptimizerShard s;
  s.range = layout_.owned();
  s.dtype = dtype_;
  s.params = param_shard();
  s.grads = grad_shard();
  s.master = states_->resident(StateKind::Master);
  s.exp_avg = states_->resident(StateKind::ExpAvg);
  s.exp_avg_sq = states_->resident(StateKind::ExpAvgSq);
  s.states = states_.get();
  s.param_store = param_store_.get();
  s.host_tier = host_tier_.get();
  return s;
}

void ShardedOptimizerState::publish_update() {
  TS_CHECK(stage_ <= 2, "stage {} gathers parameters per layer, not whole", stage_);
  group_
      .all_gather(param_shard(), params_.data(), static_cast<size_t>(layout_.shard.numel()), dtype_)
      ->wait();
}

void ShardedOptimizerState::read_weights(int64_t begin, int64_t end, float* out) {
  TS_CHECK(group_.size() == 1, "read_weights is for a one-rank shard; {} ranks gather_full",
           group_.size());
  TS_CHECK(begin >= 0 && begin <= end && end <= layout_.numel, "weights [{}, {}) of {}", begin,
           end, layout_.numel);
  if (master_apart_) {
    states_->read(StateKind::Master, begin, end, out);
  } else {
    std::memcpy(out, static_cast<const float*>(params_.data()) + begin,
                static_cast<size_t>(end - begin) * sizeof(float));
  }
}

void ShardedOptimizerState::gather_full(float* out) {
  if (group_.size() == 1) {
    read_weights(0, layout_.numel, out);  // no gather, no second whole copy
    return;
  }
  const bool from_master = master_apart_;
  if (!from_master && stage_ <= 2) {
    std::memcpy(out, params_.data(), layout_.numel * sizeof(float));
    return;
  }
  // The fp32 shards every rank holds: the master weights, or the stage-3 parameters.
  const void* mine = params_.data();
  Storage swapped_in;
  if (from_master) {
    mine = states_->resident(StateKind::Master);
    if (mine == nullptr) {
      swapped_in = Storage(layout_.shard.numel() * sizeof(float), MemCategory::Other,
                           Device::cpu(), false);
      states_->read(StateKind::Master, 0, layout_.shard.numel(),
                    static_cast<float*>(swapped_in.data()));
      mine = swapped_in.data();
    }
  }
  Storage full(layout_.padded * sizeof(float), MemCategory::Other, Device::cpu(), false);
  group_.all_gather(mine, full.data(), static_cast<size_t>(layout_.shard.numel()), DType::F32)
      ->wait();
  std::memcpy(out, full.data(), layout_.numel * sizeof(float));
}

int64_t ShardedOptimizerState::padding_param_bytes() const {
  return stage_ <= 2 ? (layout_.padded - layout_.numel) * static_cast<int64_t>(elem_size_) : 0;
}

int64_t ShardedOptimizerState::padding_grad_bytes() const {
  return stage_ == 1 ? (layout_.padded - layout_.numel) * static_cast<int64_t>(elem_size_) : 0;
}

}  // namespace tessera::memory
