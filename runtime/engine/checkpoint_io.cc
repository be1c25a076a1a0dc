#include "runtime/engine/checkpoint_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/engine/crc32c.h"

namespace tessera::engine {

namespace fs = std::filesystem;

namespace {

std::string system_error(const char* what, const std::string& path) {
  return fmt::format("checkpoint: cannot {} '{}': {}", what, path, std::strerror(errno));
}

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  TS_CHECK(fd >= 0, "{}", system_error("open", path));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  errno = err;
  // Some file systems refuse fsync on a folder (EINVAL): the rename is then as durable as
  // they make it.
  TS_CHECK(rc == 0 || errno == EINVAL, "{}", system_error("fsync", path));
}

// O_DIRECT's unit: buffers, offsets and lengths are multiples of it.
constexpr size_t kDirectAlign = 4096;

void write_all(int fd, const char* data, size_t bytes, off_t offset, const std::string& path) {
  while (bytes > 0) {
    // 64 MiB at a time keeps every O_DIRECT write a multiple of the block.
    const ssize_t n = ::pwrite(fd, data, std::min<size_t>(bytes, size_t{64} << 20), offset);
    if (n < 0 && errno == EINTR) continue;
    TS_CHECK(n > 0, "{}", system_error("write", path));
    data += n;
    offset += n;
    bytes -= static_cast<size_t>(n);
  }
}

// Writes data to the open file `fd`: the block-aligned bulk through a second, O_DIRECT
// descriptor when the buffer is aligned and the file system allows it (here 4x faster than
// the page cache's write-back, which fsync would wait for anyway), the rest through `fd`.
void write_contents(int fd, const std::string& path, const char* data, size_t bytes) {
  size_t direct = 0;
  if (reinterpret_cast<uintptr_t>(data) % kDirectAlign == 0 && bytes >= kDirectAlign) {
    // tmpfs and some network file systems refuse O_DIRECT (EINVAL): buffered writes then.
    const int dfd = ::open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
    if (dfd >= 0) {
      direct = bytes / kDirectAlign * kDirectAlign;
      try {
        write_all(dfd, data, direct, 0, path);
      } catch (...) {
        ::close(dfd);
        throw;
      }
      ::close(dfd);
    }
  }
  write_all(fd, data + direct, bytes - direct, static_cast<off_t>(direct), path);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TS_CHECK(in.good(), "checkpoint: cannot read '{}': {}", path, std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string staging_path(const std::string& root, int64_t step) {
  return (fs::path(root) / (checkpoint_folder_name(step) + ".tmp")).string();
}

std::string pieces_file(const std::string& shard_file) { return shard_file + ".pieces.json"; }

// The step of a folder name "step-00000100", or -1.
int64_t folder_step(const std::string& name) {
  if (name.size() != 13 || name.rfind("step-", 0) != 0) return -1;
  int64_t step = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

void prune(const std::string& root, const std::string& latest, int keep_last) {
  std::vector<std::pair<int64_t, fs::path>> steps;
  std::vector<fs::path> stale;
  for (const fs::directory_entry& e : fs::directory_iterator(root)) {
    const std::string name = e.path().filename().string();
    if (!e.is_directory()) continue;
    // A killed save's staging folder, a pruning cut short or a replaced step's old copy: no
    // save is in flight now, and none of them is what `latest` names.
    if (folder_step(name.substr(0, name.size() >= 4 ? name.size() - 4 : 0)) >= 0 &&
        (name.ends_with(".tmp") || name.ends_with(".old"))) {
      stale.push_back(e.path());
      continue;
    }
    const int64_t step = folder_step(name);
    if (step >= 0) steps.emplace_back(step, e.path());
  }
  for (const fs::path& p : stale) fs::remove_all(p);  // not while the folder is listed
  if (keep_last <= 0 || static_cast<int>(steps.size()) <= keep_last) return;
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + keep_last < steps.size(); ++i) {
    if (steps[i].second.filename() == latest) continue;
    // Renamed first, so a kill during the removal leaves a name the next prune removes, never
    // a step folder with half its files.
    fs::path doomed = steps[i].second;
    doomed += ".tmp";
    fs::rename(steps[i].second, doomed);
    fs::remove_all(doomed);
  }
}

// A host buffer for file data, used once: Storage asks for transparent huge pages on large
// buffers (good for the training state), whose first touch can stall for compaction; a
// buffer written once and then read by the kernel gains nothing from them.
Storage io_buffer(size_t bytes) {
  Storage s(bytes, MemCategory::Other, Device::cpu(), /*zero=*/false);
  if (s.data() != nullptr) ::madvise(s.data(), bytes, MADV_NOHUGEPAGE);
  return s;
}

}  // namespace

void write_file_durably(const std::string& path, const void* data, size_t bytes) {
  const std::string tmp = path + ".partial";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  TS_CHECK(fd >= 0, "{}", system_error("create", tmp));
  try {
    write_contents(fd, tmp, static_cast<const char*>(data), bytes);
    TS_CHECK(::fsync(fd) == 0, "{}", system_error("fsync", tmp));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  TS_CHECK(::close(fd) == 0, "{}", system_error("close", tmp));
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string message = system_error("rename into place", path);
    ::unlink(tmp.c_str());
    TS_THROW(Error, "{}", message);
  }
  fsync_path(fs::path(path).parent_path().string());
}

void ShardImage::plan(uint64_t bytes) { planned_ += bytes; }

void ShardImage::allocate(Storage spare) {
  // Block-aligned, so the shard file can be written with O_DIRECT.
  buffer_ = spare.bytes() >= planned_ + kDirectAlign ? std::move(spare)
                                                     : io_buffer(planned_ + kDirectAlign);
  const auto at = reinterpret_cast<uintptr_t>(buffer_.data());
  base_ = static_cast<char*>(buffer_.data()) + (kDirectAlign - at % kDirectAlign) % kDirectAlign;
}

void ShardImage::add(const std::string& tensor, TensorKind kind, DType dtype, const Box& box,
                     const void* data) {
  std::memcpy(add(tensor, kind, dtype, box), data,
              static_cast<size_t>(box.numel()) * dtype_size(dtype));
}

void* ShardImage::add(const std::string& tensor, TensorKind kind, DType dtype, const Box& box) {
  SavedPiece p;
  p.tensor = tensor;
  p.kind = kind;
  p.dtype = dtype;
  p.box = box;
  p.file = file_;
  p.byte_offset = used_;
  p.bytes = static_cast<uint64_t>(box.numel()) * dtype_size(dtype);
  TS_CHECK(p.byte_offset + p.bytes <= planned_, "checkpoint image: piece of {} past the plan",
           tensor);
  char* into = base_ + p.byte_offset;
  used_ = p.byte_offset + p.bytes;
  pieces_.push_back(std::move(p));
  return into;
}

void write_shard(const std::string& folder, ShardImage& image) {
  for (SavedPiece& p : image.pieces()) p.crc32c = crc32c(image.bytes() + p.byte_offset, p.bytes);
  write_file_durably((fs::path(folder) / image.file()).string(), image.bytes(), image.size());
  const std::string list = pieces_to_json(image.pieces());
  write_file_durably((fs::path(folder) / pieces_file(image.file())).string(), list.data(),
                     list.size());
}

CheckpointReader::CheckpointReader(std::string folder) : folder_(std::move(folder)) {
  const std::string path = (fs::path(folder_) / kManifestFile).string();
  TS_CHECK(fs::exists(path),
           "checkpoint '{}' has no {}: it is not a checkpoint folder, or its save did not "
           "complete",
           folder_, kManifestFile);
  manifest_ = manifest_from_json(read_text(path), path);
  for (const std::string& f : manifest_.files) {
    TS_CHECK(fs::exists(fs::path(folder_) / f),
             "checkpoint '{}': shard file '{}' is missing (the manifest lists it): restore it or "
             "resume from another checkpoint",
             folder_, f);
  }
  for (size_t i = 0; i < manifest_.pieces.size(); ++i) {
    const SavedPiece& p = manifest_.pieces[i];
    index_[{p.tensor, p.kind}].push_back(i);
  }
}

CheckpointReader::~CheckpointReader() {
  for (const auto& [name, fd] : fds_) ::close(fd);
}

bool CheckpointReader::has(TensorKind kind) const {
  return std::any_of(manifest_.pieces.begin(), manifest_.pieces.end(),
                     [&](const SavedPiece& p) { return p.kind == kind; });
}

int CheckpointReader::fd(const std::string& file) {
  const auto it = fds_.find(file);
  if (it != fds_.end()) return it->second;
  const std::string path = (fs::path(folder_) / file).string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  TS_CHECK(fd >= 0, "{}", system_error("open", path));
  fds_[file] = fd;
  return fd;
}

void CheckpointReader::load_piece(const SavedPiece& piece, void* into) {
  const int f = fd(piece.file);
  char* out = static_cast<char*>(into);
  uint64_t done = 0;
  while (done < piece.bytes) {
    const ssize_t n = ::pread(f, out + done, piece.bytes - done,
                              static_cast<off_t>(piece.byte_offset + done));
    if (n < 0 && errno == EINTR) continue;
    TS_CHECK(n >= 0, "{}", system_error("read", (fs::path(folder_) / piece.file).string()));
    TS_CHECK(n > 0,
             "checkpoint '{}': shard file '{}' ends at byte {}, before the {} piece of '{}' it "
             "should hold: the file is truncated; resume from another checkpoint",
             folder_, piece.file, piece.byte_offset + done, tensor_kind_name(piece.kind),
             piece.tensor);
    done += static_cast<uint64_t>(n);
  }
  const uint32_t crc = crc32c(out, piece.bytes);
  TS_CHECK(crc == piece.crc32c,
           "checkpoint '{}': shard file '{}' is corrupt: the {} piece of '{}' at byte {} has "
           "CRC-32C {:08x}, the manifest says {:08x}; resume from another checkpoint",
           folder_, piece.file, tensor_kind_name(piece.kind), piece.tensor, piece.byte_offset, crc,
           piece.crc32c);
}

void CheckpointReader::read(TensorKind kind, const ParamRegistry& registry, int64_t begin,
                            int64_t end, float* out) {
  std::fill(out, out + (end - begin), 0.0f);
  Storage scratch;
  for (const ParamSpec& p : registry.params()) {
    const int64_t a = std::max(begin, p.offset), b = std::min(end, p.offset + p.numel());
    if (a >= b) continue;
    const std::string name = saved_tensor_name(p);
    const Shape& whole = p.tp.split() ? p.tp.whole : p.shape;
    const SavedTensor* saved = nullptr;
    for (const SavedTensor& t : manifest_.tensors) {
      if (t.name == name) saved = &t;
    }
    TS_CHECK(saved != nullptr, "checkpoint '{}' holds no tensor '{}' (this model's {}): it was "
             "saved from another model", folder_, name, p.name);
    TS_CHECK(saved->shape == whole,
             "checkpoint '{}': tensor '{}' has shape {}, this model's is {}: it was saved from "
             "another model",
             folder_, name, shape_str(saved->shape), shape_str(whole));
    const std::vector<LocalPiece> needs = local_pieces(p, a - p.offset, b - p.offset);
    int64_t needed = 0, found = 0;
    for (const LocalPiece& n : needs) needed += n.box.numel();
    const auto it = index_.find({name, kind});
    for (size_t i : it != index_.end() ? it->second : std::vector<size_t>{}) {
      const SavedPiece& s = manifest_.pieces[i];
      bool wanted = false;
      for (const LocalPiece& n : needs) wanted = wanted || intersect(n.box, s.box).numel() > 0;
      if (!wanted) continue;
      TS_CHECK(s.dtype == DType::F32, "checkpoint '{}': the {} piece of '{}' is {}, not f32",
               folder_, tensor_kind_name(kind), name, dtype_name(s.dtype));
      if (scratch.bytes() < s.bytes) {
        scratch = io_buffer(s.bytes);
      }
      load_piece(s, scratch.data());
      const auto* src = static_cast<const float*>(scratch.data());
      for (const LocalPiece& n : needs) {
        const Box x = intersect(n.box, s.box);
        if (x.numel() == 0) continue;
        found += x.numel();
        // The pieces are row-major boxes: each row of the overlap is contiguous in both.
        float* dst = out + (p.offset - begin) + n.local_begin;
        for (int64_t r = x.row; r < x.row + x.rows; ++r) {
          std::memcpy(dst + (r - n.box.row) * n.box.cols + (x.col - n.box.col),
                      src + (r - s.box.row) * s.box.cols + (x.col - s.box.col),
                      static_cast<size_t>(x.cols) * sizeof(float));
        }
      }
    }
    TS_CHECK(found == needed,
             "checkpoint '{}': its {} pieces of '{}' hold {} of the {} elements this rank needs: "
             "a shard is missing from the manifest",
             folder_, tensor_kind_name(kind), name, found, needed);
  }
}

std::vector<float> CheckpointReader::read_tensor(const std::string& name, TensorKind kind) {
  const SavedTensor& t = manifest_.tensor(name);
  ParamRegistry one;
  ParamSpec spec;
  spec.name = name;
  spec.shape = t.shape;
  one.add(spec);
  std::vector<float> out(static_cast<size_t>(shape_numel(t.shape)));
  read(kind, one, 0, one.numel(), out.data());
  return out;
}

void CheckpointReader::verify_share(TensorKind kind, int rank, int ranks) {
  Storage scratch;
  for (size_t i = static_cast<size_t>(rank); i < manifest_.pieces.size();
       i += static_cast<size_t>(ranks)) {
    const SavedPiece& p = manifest_.pieces[i];
    if (p.kind != kind) continue;
    if (scratch.bytes() < p.bytes) {
      scratch = io_buffer(p.bytes);
    }
    load_piece(p, scratch.data());
  }
}

size_t CheckpointReader::verify() {
  check_coverage(manifest_);
  Storage scratch;
  for (const SavedPiece& p : manifest_.pieces) {
    if (scratch.bytes() < p.bytes) {
      scratch = io_buffer(p.bytes);
    }
    load_piece(p, scratch.data());
  }
  return manifest_.pieces.size();
}

bool has_latest(const std::string& root) { return fs::exists(fs::path(root) / kLatestFile); }

std::string resolve_checkpoint(const std::string& path) {
  TS_CHECK(fs::is_directory(path), "checkpoint '{}' does not exist (or is not a folder)", path);
  if (fs::exists(fs::path(path) / kManifestFile)) return path;
  if (!has_latest(path)) return "";
  std::string name = read_text((fs::path(path) / kLatestFile).string());
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  TS_CHECK(folder_step(name) >= 0,
           "'{}/{}' holds '{}', not a step folder name: the pointer is damaged; pass a step "
           "folder to --resume",
           path, kLatestFile, name);
  std::string folder = (fs::path(path) / name).string();
  // A kill while a step folder was being replaced by a newer save of the same step leaves
  // the complete old copy aside (commit_checkpoint).
  if (!fs::exists(fs::path(folder) / kManifestFile) &&
      fs::exists(fs::path(folder + ".old") / kManifestFile)) {
    folder += ".old";
  }
  TS_CHECK(fs::exists(fs::path(folder) / kManifestFile),
           "'{}/{}' points at '{}', which holds no {}: pass a step folder to --resume", path,
           kLatestFile, name, kManifestFile);
  return folder;
}

std::string prepare_staging(const std::string& root, int64_t step) {
  const std::string staging = staging_path(root, step);
  std::error_code ec;
  fs::remove_all(staging, ec);
  fs::create_directories(staging, ec);
  TS_CHECK(!ec, "checkpoint: cannot create '{}': {}: check checkpoint.dir", staging, ec.message());
  return staging;
}

void abandon_staging(const std::string& root, int64_t step) {
  std::error_code ec;
  fs::remove_all(staging_path(root, step), ec);
}

std::string commit_checkpoint(const std::string& root, int64_t step, Manifest header,
                              int keep_last) {
  const std::string staging = staging_path(root, step);
  header.pieces.clear();
  for (const std::string& file : header.files) {
    const std::string list = (fs::path(staging) / pieces_file(file)).string();
    TS_CHECK(fs::exists(list), "checkpoint step {}: '{}' was not written: a rank's save did not "
             "finish", step, list);
    for (SavedPiece& p : pieces_from_json(read_text(list), list)) {
      header.pieces.push_back(std::move(p));
    }
  }
  const std::string manifest = manifest_to_json(header);
  // Parsing it back checks every piece against the table before anything is renamed.
  manifest_from_json(manifest, "the manifest being written");
  write_file_durably((fs::path(staging) / kManifestFile).string(), manifest.data(),
                     manifest.size());
  for (const std::string& file : header.files) fs::remove(fs::path(staging) / pieces_file(file));
  fsync_path(staging);
  const std::string name = checkpoint_folder_name(step);
  const fs::path final_path = fs::path(root) / name;
  // A folder of this step from an earlier run goes aside first and only after the new one is
  // in place: rename cannot replace a non-empty folder.
  const fs::path old = fs::path(root) / (name + ".old");
  std::error_code ec;
  fs::remove_all(old, ec);
  if (fs::exists(final_path)) fs::rename(final_path, old);
  TS_CHECK(::rename(staging.c_str(), final_path.c_str()) == 0, "{}",
           system_error("rename into place", final_path.string()));
  fsync_path(root);
  const std::string pointer = name + "\n";
  write_file_durably((fs::path(root) / kLatestFile).string(), pointer.data(), pointer.size());
  fs::remove_all(old, ec);
  prune(root, name, keep_last);
  return final_path.string();
}

}  // namespace tessera::engine
