#include "memory/zero/optimizer_state.h"

#include <cstring>

#include "memory/precision.h"
#include "parallel/comm/agree.h"
#include "runtime/core/error.h"

namespace tessera::memory {

ShardInit init_from_full(const float* full) {
  return [full](ShardRange range, float* out) {
    if (range.numel() > 0) {
      std::memcpy(out, full + range.begin, static_cast<size_t>(range.numel()) * sizeof(float));
    }
  };
}

ShardedOptimizerState::ShardedOptimizerState(const ParamRegistry& registry,
                                             parallel::ProcessGroup& group, int stage, DType dtype,
                                             const ShardInit& init)
    : group_(group),
      stage_(stage),
      dtype_(dtype),
      elem_size_(dtype_size(dtype)),
      layout_(registry.numel(), group.rank(), group.size()) {
  TS_CHECK(stage >= 1 && stage <= 3, "ZeRO's sharded optimizer state is for stages 1-3, not {}",
           stage);
  check_working_dtype(dtype);
  const int64_t S = layout_.shard.numel();
  params_ = Storage((stage <= 2 ? layout_.padded : S) * elem_size_, MemCategory::Params);
  grads_ = Storage((stage == 1 ? layout_.padded : S) * elem_size_, MemCategory::Grads);
  if (is_16bit(dtype)) master_ = Storage(S * sizeof(float), MemCategory::Optimizer);
  exp_avg_ = Storage(S * sizeof(float), MemCategory::Optimizer);
  exp_avg_sq_ = Storage(S * sizeof(float), MemCategory::Optimizer);

  // The fp32 values land where they live: the master shard beside 16-bit working weights, the
  // working shard itself in f32. The padding stays zero.
  const ShardRange owned = layout_.owned();
  float* fp32 =
      is_16bit(dtype) ? static_cast<float*>(master_.data()) : static_cast<float*>(param_shard());
  parallel::run_agreed(group, [&] {
    if (owned.numel() > 0) init(owned, fp32);
  });
  if (is_16bit(dtype)) store_working(dtype, fp32, param_shard(), owned.numel());
  // Stages 1-2 train on whole parameters: the same gather as after every update.
  if (stage <= 2) publish_update();
}

void* ShardedOptimizerState::full_params() const {
  TS_CHECK(stage_ <= 2, "stage {} keeps no whole parameters", stage_);
  return params_.data();
}

void* ShardedOptimizerState::param_shard() const {
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
  s.master =
      is_16bit(dtype_) ? static_cast<float*>(master_.data()) : static_cast<float*>(param_shard());
  s.exp_avg = static_cast<float*>(exp_avg_.data());
  s.exp_avg_sq = static_cast<float*>(exp_avg_sq_.data());
  return s;
}

void ShardedOptimizerState::publish_update() {
  TS_CHECK(stage_ <= 2, "stage {} gathers parameters per layer, not whole", stage_);
  group_
      .all_gather(param_shard(), params_.data(), static_cast<size_t>(layout_.shard.numel()), dtype_)
      ->wait();
}

void ShardedOptimizerState::gather_full(float* out) {
  const bool from_master = is_16bit(dtype_);
  if (!from_master && stage_ <= 2) {
    std::memcpy(out, params_.data(), layout_.numel * sizeof(float));
    return;
  }
  // The fp32 shards every rank holds: the master weights, or the stage-3 parameters.
  const void* mine = from_master ? master_.data() : params_.data();
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
