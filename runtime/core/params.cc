#include "runtime/core/params.h"

#include "runtime/core/rng.h"

namespace tessera {

const ParamSpec& ParamRegistry::add(ParamSpec spec) {
  TS_CHECK(spec.layer == num_layers() - 1 || spec.layer == num_layers(),
           "parameter {} registered for layer {} after layer {}: register in forward order",
           spec.name, spec.layer, num_layers() - 1);
  for (const ParamSpec& p : params_) {
    TS_CHECK(p.name != spec.name, "parameter {} registered twice", spec.name);
  }
  spec.offset = numel_;
  numel_ += spec.numel();
  if (spec.layer == num_layers()) layers_.push_back({spec.offset, spec.offset});
  layers_.back().end = numel_;
  params_.push_back(std::move(spec));
  return params_.back();
}

const ParamSpec& ParamRegistry::find(const std::string& name) const {
  for (const ParamSpec& p : params_) {
    if (p.name == name) return p;
  }
  TS_THROW(InvalidArgument, "no parameter named '{}' in this model", name);
}

template <typename T>
void init_params(const ParamRegistry& registry, T* flat, uint64_t seed) {
  const auto& params = registry.params();
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamSpec& p = params[i];
    T* out = flat + p.offset;
    const int64_t n = p.numel();
    switch (p.init) {
      case ParamInit::Zeros:
        for (int64_t j = 0; j < n; ++j) out[j] = T(0);
        break;
      case ParamInit::Ones:
        for (int64_t j = 0; j < n; ++j) out[j] = T(1);
        break;
      case ParamInit::Normal:
#pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < n; ++j) {
          out[j] = static_cast<T>(p.init_std * normal_at(seed, i, j));
        }
        break;
    }
  }
}

template void init_params<float>(const ParamRegistry&, float*, uint64_t);
template void init_params<double>(const ParamRegistry&, double*, uint64_t);

}  // namespace tessera
