#include "runtime/core/params.h"

#include <algorithm>

#include "runtime/core/error.h"
#include "runtime/core/rng.h"

namespace tessera {

int64_t ParamSpec::whole_index(int64_t j) const {
  if (!tp.split()) return j;
  const int64_t cols = shape.size() >= 2 ? numel() / shape[0] : 1;
  const int64_t whole_rows = tp.whole[0];
  const int64_t whole_cols = tp.whole.size() >= 2 ? shape_numel(tp.whole) / whole_rows : 1;
  int64_t row = j / cols;
  for (const TpSlice::RowRun& run : tp.runs) {
    if (row < run.rows) {
      const int64_t whole_row = run.whole_row + row;
      if (whole_row >= whole_rows) return -1;
      return whole_row * whole_cols + tp.col_begin + j % cols;
    }
    row -= run.rows;
  }
  return -1;  // unreachable: ParamRegistry::add checks the runs cover the rows
}

const ParamSpec& ParamRegistry::add(ParamSpec spec) {
  TS_CHECK(spec.layer >= num_layers() - 1 && spec.layer >= 0,
           "parameter {} registered for layer {} after layer {}: register in forward order",
           spec.name, spec.layer, num_layers() - 1);
  pad_layers(spec.layer);
  for (const ParamSpec& p : params_) {
    TS_CHECK(p.name != spec.name, "parameter {} registered twice", spec.name);
  }
  if (spec.tp.split()) {
    int64_t rows = 0;
    for (const TpSlice::RowRun& run : spec.tp.runs) rows += run.rows;
    const int64_t cols = spec.shape.size() >= 2 ? spec.numel() / spec.shape[0] : 1;
    const int64_t whole_cols = spec.tp.whole.size() >= 2 ? shape_numel(spec.tp.whole) / spec.tp.whole[0] : 1;
    TS_CHECK(!spec.shape.empty() && rows == spec.shape[0] && spec.tp.col_begin >= 0 &&
                 spec.tp.col_begin + cols <= whole_cols,
             "parameter {}: its tensor-parallel runs cover {} rows and columns [{}, {}) of a "
             "whole parameter with {} columns, not its {} rows",
             spec.name, rows, spec.tp.col_begin, spec.tp.col_begin + cols, whole_cols,
             spec.shape.empty() ? 0 : spec.shape[0]);
  }
  spec.offset = numel_;
  numel_ += spec.numel();
  if (spec.rows_per_layer > 0) {
    TS_CHECK(spec.layer == num_layers() && !spec.shape.empty() && spec.shape[0] > 0,
             "parameter {} split by rows must start a new layer and have rows", spec.name);
    const int64_t row = spec.numel() / spec.shape[0];
    for (int64_t r = 0; r < spec.shape[0]; r += spec.rows_per_layer) {
      const int64_t rows = std::min(spec.rows_per_layer, spec.shape[0] - r);
      layers_.push_back({spec.offset + r * row, spec.offset + (r + rows) * row});
    }
  } else {
    if (spec.layer == num_layers()) layers_.push_back({spec.offset, spec.offset});
    layers_.back().end = numel_;
  }
  params_.push_back(std::move(spec));
  return params_.back();
}

void ParamRegistry::pad_layers(int layers) {
  while (num_layers() < layers) layers_.push_back({numel_, numel_});
}

void ParamRegistry::set_grad_reports(int layer, int reports) {
  TS_CHECK(reports == 1 || reports == 2,
           "a layer's gradients are reported once or twice a pass, "
           "not {}",
           reports);
  layers_.at(layer).grad_reports = reports;
}

const ParamSpec& ParamRegistry::find(const std::string& name) const {
  for (const ParamSpec& p : params_) {
    if (p.name == name) return p;
  }
  TS_THROW(InvalidArgument, "no parameter named '{}' in this model", name);
}

template <typename T>
void init_params_range(const ParamRegistry& registry, T* out, uint64_t seed, int64_t begin,
                       int64_t end) {
  TS_CHECK(0 <= begin && begin <= end && end <= registry.numel(),
           "init_params_range: [{}, {}) is not a range of the model's {} elements", begin, end,
           registry.numel());
  const auto& params = registry.params();
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamSpec& p = params[i];
    // The part of parameter i inside [begin, end), as indices j into the parameter.
    const int64_t j0 = std::max<int64_t>(begin - p.offset, 0);
    const int64_t j1 = std::min<int64_t>(end - p.offset, p.numel());
    if (j0 >= j1) continue;
    T* dst = out + (p.offset + j0 - begin);
    const uint64_t stream = p.init_id >= 0 ? static_cast<uint64_t>(p.init_id) : i;
    if (p.tp.split()) {
      // A tensor-parallel part: each element is the whole parameter's element it stands for,
      // so any t starts from the one-rank model; padding is zero.
#pragma omp parallel for schedule(static)
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t w = p.whole_index(j);
        T v = T(0);
        if (w >= 0 && p.init == ParamInit::Ones) v = T(1);
        if (w >= 0 && p.init == ParamInit::Normal) v = static_cast<T>(p.init_std * normal_at(seed, stream, w));
        dst[j - j0] = v;
      }
      continue;
    }
    switch (p.init) {
      case ParamInit::Zeros:
        for (int64_t j = j0; j < j1; ++j) dst[j - j0] = T(0);
        break;
      case ParamInit::Ones:
        for (int64_t j = j0; j < j1; ++j) dst[j - j0] = T(1);
        break;
      case ParamInit::Normal:
#pragma omp parallel for schedule(static)
        for (int64_t j = j0; j < j1; ++j) {
          dst[j - j0] = static_cast<T>(p.init_std * normal_at(seed, stream, j));
        }
        break;
    }
  }
}

template <typename T>
void init_params(const ParamRegistry& registry, T* flat, uint64_t seed) {
  init_params_range(registry, flat, seed, 0, registry.numel());
}

template void init_params<float>(const ParamRegistry&, float*, uint64_t);
template void init_params<double>(const ParamRegistry&, double*, uint64_t);
template void init_params_range<float>(const ParamRegistry&, float*, uint64_t, int64_t, int64_t);
template void init_params_range<double>(const ParamRegistry&, double*, uint64_t, int64_t, int64_t);

}  // namespace tessera
