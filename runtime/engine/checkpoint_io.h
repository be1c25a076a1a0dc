// Writing and reading checkpoint folders (the format is checkpoint_format.h).
//
// A save is staged in "<dir>/step-N.tmp": every rank writes its shard file and its list of
// pieces there under temporary names, fsyncs and renames them; once every rank is done,
// rank 0 merges the lists into manifest.json, renames the folder to "step-N" and replaces
// the "latest" pointer (a temporary file renamed over it), fsyncing each folder it changed,
// and only then prunes old checkpoints. A kill at any point leaves "latest" naming a
// complete checkpoint, or absent when none was ever completed.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/core/storage.h"
#include "runtime/engine/checkpoint_format.h"

namespace tessera::engine {

// One rank's part of a checkpoint, copied out of the training state: the pieces and their
// bytes, laid end to end in one host buffer (no gaps: every byte of a shard file is in a
// piece, under a CRC). Training may go on changing
// its own buffers while the image is written.
class ShardImage {
 public:
  ShardImage() = default;
  explicit ShardImage(std::string file) : file_(std::move(file)) {}
  // Reserves room for a piece of `bytes` bytes (call for every piece, then allocate()).
  void plan(uint64_t bytes);
  // Allocates the host buffer (MemCategory::Other) for the pieces planned, or takes `spare`
  // when it is large enough (an earlier image's, already faulted in: async saves reuse it).
  void allocate(Storage spare = {});
  // The host buffer, for a later image to reuse.
  Storage release_buffer() { base_ = nullptr; return std::move(buffer_); }
  // Copies a piece in, in the order planned.
  void add(const std::string& tensor, TensorKind kind, DType dtype, const Box& box,
           const void* data);
  // Adds a piece and returns where its bytes go, for the caller to fill before writing.
  void* add(const std::string& tensor, TensorKind kind, DType dtype, const Box& box);
  const std::string& file() const { return file_; }
  std::vector<SavedPiece>& pieces() { return pieces_; }
  const char* bytes() const { return base_; }
  uint64_t size() const { return used_; }

 private:
  std::string file_;
  uint64_t planned_ = 0, used_ = 0;
  Storage buffer_;
  char* base_ = nullptr;  // buffer_'s first 4096-aligned byte
  std::vector<SavedPiece> pieces_;
};

// Fills in every piece's CRC-32C and writes the image's shard file and piece list into
// `folder` durably (temporary names, fsync, rename, fsync of the folder). Throws Error
// naming the file and the system's reason (a full disk: "No space left on device").
void write_shard(const std::string& folder, ShardImage& image);

// A checkpoint folder opened for reading: its manifest parsed and checked, its shard files
// present. Every piece read is checked against its CRC-32C first.
class CheckpointReader {
 public:
  explicit CheckpointReader(std::string folder);
  ~CheckpointReader();
  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;

  const Manifest& manifest() const { return manifest_; }
  const std::string& folder() const { return folder_; }
  // Whether the checkpoint holds tensors of `kind`.
  bool has(TensorKind kind) const;
  // Fills out[0, end - begin) with `kind`'s values of flat elements [begin, end) of a rank's
  // registry (any layout): each parameter from the saved tensor it is part of, padding and
  // elements past the registry zero. Throws Error when a tensor's shape differs from the
  // checkpoint's, a piece fails its CRC (naming the shard file), or elements are missing.
  void read(TensorKind kind, const ParamRegistry& registry, int64_t begin, int64_t end,
            float* out);
  // The whole tensor of `kind` (f32 kinds), in its [rows, cols] row-major order.
  std::vector<float> read_tensor(const std::string& name, TensorKind kind);
  // Checks the CRC of every `ranks`-th piece of `kind` from piece `rank` on: what a resume
  // does not read (the working copy, re-derived from the master) is still checked, split
  // over the ranks.
  void verify_share(TensorKind kind, int rank, int ranks);
  // Reads every piece and checks its CRC and the pieces' coverage of every tensor. Throws
  // Error naming the first bad piece; returns the pieces checked.
  size_t verify();

 private:
  // The piece's bytes, CRC checked, into `into` (piece.bytes bytes).
  void load_piece(const SavedPiece& piece, void* into);
  int fd(const std::string& file);

  std::string folder_;
  Manifest manifest_;
  std::map<std::pair<std::string, TensorKind>, std::vector<size_t>> index_;  // into pieces
  std::map<std::string, int> fds_;
};

// The checkpoint folder `path` names: a step folder (it holds manifest.json) as it is, or a
// checkpoint root through its "latest" pointer. Returns "" when `path` is a root with no
// "latest" (nothing saved yet); throws Error when it is neither, or "latest" names a folder
// that does not hold a manifest.
std::string resolve_checkpoint(const std::string& path);
// Whether the root holds a "latest" pointer.
bool has_latest(const std::string& root);

// Rank 0, before any rank writes: a fresh, empty staging folder for `step` (a stale one from
// a killed save is removed). Returns its path.
std::string prepare_staging(const std::string& root, int64_t step);
// Rank 0, after every rank's write_shard returned: merges the ranks' piece lists into
// `header`'s manifest, writes it, renames the staging folder into place, points "latest"
// at it and prunes to the `keep_last` newest step folders (0: keep all; the latest is never
// removed), and stale staging folders with them. Returns the step folder's path.
std::string commit_checkpoint(const std::string& root, int64_t step, Manifest header,
                              int keep_last);
// Rank 0, after a failed save: removes its staging folder (nothing else changes).
void abandon_staging(const std::string& root, int64_t step);

// Writes `bytes` to `path` durably: a temporary file beside it, fsynced and renamed over it,
// then the folder fsynced.
void write_file_durably(const std::string& path, const void* data, size_t bytes);

}  // namespace tessera::engine
