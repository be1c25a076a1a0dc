// The training checkpoint's format: a folder per step holding a JSON manifest and one shard
// file per rank (docs/CHECKPOINTS.md).
//
// Tensors are saved in the one-rank model's coordinates (the registry of build_gpt_registry
// with no parallelism: Hugging Face names, whole shapes), whatever the layout that wrote
// them, so any layout can read any checkpoint. A rank writes the parts it owns as pieces:
// boxes of a tensor seen as a matrix [rows, cols] (a vector: [n, 1]), each the image of one
// contiguous run of the rank's flat buffer. Tensor-parallel row runs and column ranges, ZeRO
// shard cuts and pipeline stages all reduce to such boxes; padding (vocabulary rows, shard
// alignment) maps to no box, so it never reaches a file.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "models/gpt_config.h"
#include "runtime/core/dtype.h"
#include "runtime/core/params.h"
#include "runtime/engine/loss_scaler.h"

namespace tessera::engine {

inline constexpr int kCheckpointFormatVersion = 1;
inline constexpr const char* kCheckpointFormatName = "tessera-checkpoint";
inline constexpr const char* kManifestFile = "manifest.json";
inline constexpr const char* kLatestFile = "latest";

// What a saved tensor holds: the fp32 weights the optimizer updates (in f32 runs the
// parameters themselves), AdamW's moments, or the 16-bit working copy (bf16 / fp16 runs;
// always the master rounded, saved for inspection and export, re-derived on load).
enum class TensorKind { Master, ExpAvg, ExpAvgSq, Working };
const char* tensor_kind_name(TensorKind kind);
// "master", "exp_avg", "exp_avg_sq" or "working"; throws naming them otherwise.
TensorKind parse_tensor_kind(const std::string& name);

// A box of a tensor seen as [rows, cols]: rows [row, row + rows), cols [col, col + cols).
struct Box {
  int64_t row = 0, rows = 0, col = 0, cols = 0;
  int64_t numel() const { return rows * cols; }
};
// The intersection (rows or cols 0 when disjoint).
Box intersect(const Box& a, const Box& b);
// The [rows, cols] view of a shape: cols is the product of every dimension after the first.
int64_t view_rows(const Shape& shape);
int64_t view_cols(const Shape& shape);

// One contiguous run of a rank's parameter and where it lands in the whole tensor.
struct LocalPiece {
  int64_t local_begin = 0;  // elements from the start of the parameter's local part
  Box box;                  // in the whole tensor; box.numel() local elements from local_begin
};
// The pieces of elements [begin, end) of parameter p's local part, in local order, padding
// left out. Under tensor parallelism p's part is runs of whole rows restricted to a column
// range (TpSlice); without it the part is the whole tensor.
std::vector<LocalPiece> local_pieces(const ParamSpec& p, int64_t begin, int64_t end);
// The saved tensor a rank's parameter is part of: its own name, except the last pipeline
// stage's head copy, which is the word embedding's twin ("wte.weight").
std::string saved_tensor_name(const ParamSpec& p);

// One piece in a shard file.
struct SavedPiece {
  std::string tensor;
  TensorKind kind = TensorKind::Master;
  DType dtype = DType::F32;
  Box box;
  std::string file;  // the shard file's name in the checkpoint folder
  uint64_t byte_offset = 0;
  uint64_t bytes = 0;
  uint32_t crc32c = 0;
};

struct SavedTensor {
  std::string name;
  Shape shape;  // the whole tensor
};

// The layout that wrote the checkpoint (informational: any layout reads it).
struct CheckpointLayout {
  int world = 1;
  int dp = 1, tp = 1, pp = 1, virtual_pp = 1;
  int zero_stage = 0;
  bool sequence_parallel = false;
  DType precision = DType::F32;
};

// Everything besides the tensors that makes the next step the one the uninterrupted run takes.
struct TrainingProgress {
  int64_t step = 0;             // optimizer steps run (skipped fp16 steps included)
  int64_t optimizer_steps = 0;  // updates applied: Adam's bias correction and the LR schedule
  double lr = 0.0;              // the last step's learning rate (informational)
  std::optional<LossScaler::State> loss_scaler;  // fp16 only
  // The data loader: global micro-batches consumed (every data-parallel rank's together),
  // their size, the order (shuffled or sequential) and the seed that draws it.
  int64_t consumed_micro_batches = 0;
  int micro_batch_size = 0;
  int seq_len = 0;
  bool shuffle = false;
  uint64_t data_seed = 0;
  // The run's seed: the initial weights' stream. Training itself draws no random numbers
  // (no dropout), so the loader's order is the only random state a step reads.
  uint64_t seed = 0;
};

struct Manifest {
  int version = kCheckpointFormatVersion;
  models::GPTConfig model;
  CheckpointLayout layout;
  TrainingProgress progress;
  std::vector<SavedTensor> tensors;
  std::vector<std::string> files;  // one shard file per rank, in world-rank order
  std::vector<SavedPiece> pieces;

  const SavedTensor& tensor(const std::string& name) const;
  // Bytes of every piece.
  uint64_t total_bytes() const;
};

std::string manifest_to_json(const Manifest& m);
// Parses and checks a manifest: the format name and version (a newer version is refused with
// the version this build reads), every field's type, pieces inside their tensors. `source`
// names it in errors.
Manifest manifest_from_json(const std::string& text, const std::string& source);
// A rank's own pieces, the part of the manifest it contributes (written beside its shard).
std::string pieces_to_json(const std::vector<SavedPiece>& pieces);
std::vector<SavedPiece> pieces_from_json(const std::string& text, const std::string& source);

// Checks that the pieces of every (tensor, kind) tile it exactly: no element missing, none
// twice. Throws Error naming the tensor and what is wrong.
void check_coverage(const Manifest& m);

// "step-00000100".
std::string checkpoint_folder_name(int64_t step);

}  // namespace tessera::engine
