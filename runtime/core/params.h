// The parameter registry and the ParamAccess seam.
//
// Every parameter is registered once, in forward order, and lives at a fixed offset of one
// flat buffer; a layer's parameters are one contiguous range, so a ZeRO shard or a gathered
// layer is plain offset arithmetic. Layers never see which ZeRO stage runs them: they ask a
// ParamAccess for their parameters and report when their gradients are ready.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/core/tensor.h"

namespace tessera {

enum class ParamInit { Zeros, Ones, Normal };
// How Megatron-style tensor parallelism splits a parameter over the tensor-parallel group:
// not at all (replicated: LayerNorms, row-parallel biases, positions), by rows of its
// [out, in] matrix (column-parallel weights and their biases, the vocabulary-parallel word
// embedding) or by columns (row-parallel weights).
enum class TpSplit { None, Rows, Cols };

// The part of the whole (one-rank, Hugging Face) parameter a tensor-parallel rank holds. The
// parameter is seen as a matrix [rows, cols] (a vector: [n, 1]); the rank holds runs of whole
// rows (c_attn holds three: its heads' q, k and v) restricted to columns [col_begin,
// col_begin + local cols). Rows past the whole parameter's are padding (the vocabulary padded
// to a multiple of 128 x t): zero, never read by a kernel, never trained.
struct TpSlice {
  struct RowRun {
    int64_t whole_row;  // the run's first row in the whole parameter
    int64_t rows;
  };
  Shape whole;  // empty: not split, the rank holds the whole parameter
  std::vector<RowRun> runs;
  int64_t col_begin = 0;
  bool split() const { return !whole.empty(); }
};

struct ParamSpec {
  std::string name;  // Hugging Face GPT-2 name, e.g. "h.3.attn.c_attn.weight"
  Shape shape;
  int layer =
      0;  // owning layer (the first, when split): the unit of acquire / release / grads_ready
  ParamInit init = ParamInit::Zeros;
  float init_std = 0.0f;  // for ParamInit::Normal
  TpSplit split = TpSplit::None;
  TpSlice tp;  // set with split != None
  int64_t offset = 0;  // elements from the start of the flat buffer (set by the registry)
  // The parameter whose initial values this one draws (its index in the whole model's
  // registry; -1: its own index here). A pipeline rank's registry holds only some of the
  // model's parameters, and a head copy starts as the word embedding's twin.
  int init_id = -1;
  // > 0: the parameter is split by rows (its first dimension) into consecutive layers of this
  // many rows each (the last may hold fewer), starting at `layer`: the word embedding,
  // gathered a chunk at a time under ZeRO-3.
  int64_t rows_per_layer = 0;
  int64_t numel() const { return shape_numel(shape); }
  // The whole parameter's element that element j of this rank's part is, or -1 for padding.
  int64_t whole_index(int64_t j) const;
  int64_t whole_numel() const { return tp.split() ? shape_numel(tp.whole) : numel(); }
};

struct LayerRange {
  int64_t begin = 0;  // first element of the layer in the flat buffer
  int64_t end = 0;    // one past its last element
  // Times backward reports the layer's gradients (grads_ready) in one pass: 2 for the chunks
  // of a word embedding tied to the head and split over several layers (the head's part,
  // then the embedding's), so that neither part waits whole for the other.
  int grad_reports = 1;
  int64_t numel() const { return end - begin; }
};

class ParamRegistry {
 public:
  // Appends a parameter to `layer`, which must be the last layer registered or a later one
  // (with rows_per_layer, the first of the layers it is split over). Layers skipped on the way
  // are empty: a pipeline rank's registry keeps the whole model's layer numbers and holds
  // only its stages' layers.
  const ParamSpec& add(ParamSpec spec);
  // Appends empty layers up to `layers` in all.
  void pad_layers(int layers);
  // Backward reports `layer` this many times per pass (LayerRange::grad_reports).
  void set_grad_reports(int layer, int reports);
  const std::vector<ParamSpec>& params() const { return params_; }
  const ParamSpec& find(const std::string& name) const;
  int64_t numel() const { return numel_; }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  const LayerRange& layer(int i) const { return layers_.at(i); }

 private:
  std::vector<ParamSpec> params_;
  std::vector<LayerRange> layers_;
  int64_t numel_ = 0;
};

// Fills `flat` (registry.numel() elements) with each parameter's initial values,
// deterministically from `seed`: the same seed gives the same model on any rank count.
template <typename T>
void init_params(const ParamRegistry& registry, T* flat, uint64_t seed);
// Elements [begin, end) of what init_params writes, into out[0, end - begin): bit for bit
// the same values (each element depends only on (seed, parameter, index), see rng.h), so a
// ZeRO rank builds its shard without ever holding the whole model.
template <typename T>
void init_params_range(const ParamRegistry& registry, T* out, uint64_t seed, int64_t begin,
                       int64_t end);

// How a layer reaches its parameters and gradient slots. Pointers are to the layer's range,
// laid out as in the flat buffer (element 0 = the layer's first parameter).
class ParamAccess {
 public:
  virtual ~ParamAccess() = default;
  // Parameters of `layer` are valid from return until release(layer).
  virtual void* acquire(int layer) = 0;
  virtual void release(int layer) = 0;
  // Where backward accumulates the layer's gradients.
  virtual void* grads(int layer) = 0;
  // The layer's backward has finished writing its gradients for this micro-batch.
  virtual void grads_ready(int layer) = 0;

  // The step's lifecycle, called by the engine (never by a layer), so the engine never needs
  // to know which ZeRO stage or data-parallel layout it drives.
  // Before a step's first micro-batch: the gradients this rank accumulates start at zero.
  virtual void zero_grads() = 0;
  // Before each micro-batch's forward. training: its backward follows. last: the last
  // micro-batch of the optimizer step (layouts that reduce once per step reduce in it).
  virtual void begin_micro_batch(bool /*training*/, bool /*last*/) {}
  // After the step's last backward: waits for every gradient reduction (rethrowing a
  // communication failure); the gradients the optimizer reads are then final.
  virtual void finish_gradients() {}
  // After the optimizer changed this rank's parameters: layouts that keep copies of other
  // ranks' parameters refresh them.
  virtual void after_update() {}
};

// Stage 0 on one rank: whole flat buffers, nothing to gather or reduce.
class LocalParamAccess final : public ParamAccess {
 public:
  LocalParamAccess(const ParamRegistry& registry, void* params, void* grads, size_t elem_size)
      : registry_(registry), params_(static_cast<char*>(params)), grads_(static_cast<char*>(grads)),
        elem_size_(elem_size) {}
  void* acquire(int layer) override { return params_ + registry_.layer(layer).begin * elem_size_; }
  void release(int) override {}
  void* grads(int layer) override { return grads_ + registry_.layer(layer).begin * elem_size_; }
  void grads_ready(int) override {}
  void zero_grads() override {
    std::memset(grads_, 0, static_cast<size_t>(registry_.numel()) * elem_size_);
  }

 private:
  const ParamRegistry& registry_;
  char* params_;
  char* grads_;
  size_t elem_size_;
};

}  // namespace tessera
