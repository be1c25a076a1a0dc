// Strict safetensors reader and writer. The reader refuses anything the format does not
// allow (a short file, a header past the end, overlapping or gapped data, a size that does
// not match the shape) rather than guessing: a checkpoint that is silently misread trains a
// wrong model for hours before anyone notices.
#include "models/safetensors.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "runtime/core/error.h"
#include "runtime/core/half.h"
#include "runtime/core/storage.h"
#include "runtime/core/temp_path.h"

namespace tessera::models {

// Every multi-byte value in the format is little-endian; so is every host tessera targets,
// which lets the data section be copied as is.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes little-endian");

namespace {

// The reference implementation caps headers at 100 MB; a larger length is a corrupt or
// foreign file, and trusting it would make us parse gigabytes of tensor data as JSON.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;
constexpr const char* kMetadataKey = "__metadata__";

bool parse_safetensors_dtype(const std::string& name, DType* out) {
  if (name == "F32")
    *out = DType::F32;
  else if (name == "F16")
    *out = DType::F16;
  else if (name == "BF16")
    *out = DType::BF16;
  else
    return false;
  return true;
}

// A non-negative JSON integer, or -1.
int64_t as_count(const nlohmann::json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    return u > static_cast<uint64_t>(INT64_MAX) ? -1 : static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    return i < 0 ? -1 : i;
  }
  return -1;
}

std::string errno_text() { return std::strerror(errno); }

}  // namespace

std::string safetensors_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    default:
      break;
  }
  TS_THROW(InvalidArgument, "safetensors: cannot store dtype {}: use f32, f16 or bf16",
           dtype_name(dtype));
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  TS_CHECK(fd >= 0, "safetensors {}: cannot open: {}; check the path", path, errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string why = errno_text();
    ::close(fd);
    TS_THROW(InvalidArgument, "safetensors {}: cannot stat: {}", path, why);
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    TS_THROW(InvalidArgument,
             "safetensors {}: file is {} bytes, shorter than the 8-byte header length: the file "
             "is truncated or not safetensors; re-download or re-save it",
             path, file_size);
  }
  map_ = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const std::string map_error = map_ == MAP_FAILED ? errno_text() : "";
  ::close(fd);  // the mapping keeps the file alive
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    TS_THROW(InvalidArgument, "safetensors {}: mmap failed: {}", path, map_error);
  }
  map_size_ = file_size;
  try {
    const auto* bytes = static_cast<const unsigned char*>(map_);
    uint64_t header_len = 0;
    std::memcpy(&header_len, bytes, 8);
    TS_CHECK(header_len >= 2 && header_len <= kMaxHeaderBytes,
             "safetensors {}: header length {} is not plausible (expected 2..{} bytes): the file "
             "is corrupt or not safetensors; re-download or re-save it",
             path, header_len, kMaxHeaderBytes);
    TS_CHECK(header_len <= file_size - 8,
             "safetensors {}: header length {} runs past the end of the {}-byte file: the file is "
             "truncated; re-download or re-save it",
             path, header_len, file_size);
    const std::string_view header(reinterpret_cast<const char*>(bytes + 8), header_len);
    parse_header(header, static_cast<int64_t>(file_size - 8 - header_len));
    for (SafetensorsTensor& t : tensors_) {
      t.data = reinterpret_cast<const std::byte*>(bytes + 8 + header_len + t.begin);
    }
  } catch (...) {
    ::munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  for (const SafetensorsTensor& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

void SafetensorsFile::parse_header(std::string_view header, int64_t data_size) {
  const std::string& path = path_;
  // nlohmann keeps the last of duplicate keys silently; a duplicate tensor name means the
  // writer was broken, so collect the top-level keys as the parser sees them.
  std::set<std::string> seen_keys;
  std::string duplicate_key;
  auto on_event = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1) {
      const std::string key = parsed.get<std::string>();
      if (!seen_keys.insert(key).second && duplicate_key.empty()) duplicate_key = key;
    }
    return true;
  };
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(header.begin(), header.end(), on_event);
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for 1e999
    TS_THROW(InvalidArgument,
             "safetensors {}: header is not valid JSON ({}): the file is corrupt or not "
             "safetensors; re-download or re-save it",
             path, e.what());
  }
  TS_CHECK(root.is_object(),
           "safetensors {}: header is JSON {} but must be an object of tensors; the file is not "
           "safetensors",
           path, root.type_name());
  TS_CHECK(duplicate_key.empty(),
           "safetensors {}: tensor '{}' appears twice in the header; the writer is broken, re-save "
           "the file",
           path, duplicate_key);

  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& entry = it.value();
    if (name == kMetadataKey) {
      TS_CHECK(entry.is_object(),
               "safetensors {}: __metadata__ must be an object of strings, found {}; re-save the "
               "file",
               path, entry.type_name());
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        TS_CHECK(m.value().is_string(),
                 "safetensors {}: __metadata__ key '{}' has a {} value, but metadata values must "
                 "be strings; re-save the file",
                 path, m.key(), m.value().type_name());
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    TS_CHECK(entry.is_object(),
             "safetensors {}: tensor '{}' has a {} entry, expected an object with dtype, shape "
             "and data_offsets; re-save the file",
             path, name, entry.type_name());
    for (auto f = entry.begin(); f != entry.end(); ++f) {
      TS_CHECK(f.key() == "dtype" || f.key() == "shape" || f.key() == "data_offsets",
               "safetensors {}: tensor '{}' has an unknown field '{}' (allowed: dtype, shape, "
               "data_offsets); re-save the file",
               path, name, f.key());
    }
    TS_CHECK(entry.contains("dtype") && entry.contains("shape") && entry.contains("data_offsets"),
             "safetensors {}: tensor '{}' lacks dtype, shape or data_offsets; re-save the file",
             path, name);

    SafetensorsTensor t;
    t.name = name;
    const nlohmann::json& dtype = entry["dtype"];
    TS_CHECK(dtype.is_string(),
             "safetensors {}: tensor '{}' has a non-string dtype; re-save the file", path, name);
    TS_CHECK(parse_safetensors_dtype(dtype.get<std::string>(), &t.dtype),
             "safetensors {}: tensor '{}' has dtype {}, but tessera reads only F32, F16 and BF16: "
             "convert the checkpoint's float tensors first (e.g. tensor.float() in torch, then "
             "safetensors.torch.save_file)",
             path, name, dtype.get<std::string>());

    const nlohmann::json& shape = entry["shape"];
    TS_CHECK(shape.is_array(),
             "safetensors {}: tensor '{}' shape must be an array; re-save the file", path, name);
    int64_t numel = 1;
    bool overflow = false;
    for (const nlohmann::json& d : shape) {
      const int64_t dim = as_count(d);
      TS_CHECK(dim >= 0,
               "safetensors {}: tensor '{}' has shape entry {}, expected a non-negative integer; "
               "re-save the file",
               path, name, d.dump());
      t.shape.push_back(dim);
      overflow = overflow || __builtin_mul_overflow(numel, dim, &numel);
    }
    int64_t expected_bytes = 0;
    overflow = overflow || __builtin_mul_overflow(numel, static_cast<int64_t>(dtype_size(t.dtype)),
                                                  &expected_bytes);
    TS_CHECK(!overflow, "safetensors {}: tensor '{}' shape {} is too large; the header is corrupt",
             path, name, shape.dump());

    const nlohmann::json& offsets = entry["data_offsets"];
    TS_CHECK(offsets.is_array() && offsets.size() == 2 && as_count(offsets[0]) >= 0 &&
                 as_count(offsets[1]) >= 0,
             "safetensors {}: tensor '{}' data_offsets must be [begin, end] with non-negative "
             "integers, found {}; re-save the file",
             path, name, offsets.dump());
    t.begin = as_count(offsets[0]);
    t.end = as_count(offsets[1]);
    TS_CHECK(t.begin <= t.end,
             "safetensors {}: tensor '{}' data_offsets [{}, {}] end before they begin; re-save the "
             "file",
             path, name, t.begin, t.end);
    TS_CHECK(t.end <= data_size,
             "safetensors {}: tensor '{}' data_offsets [{}, {}] are out of bounds of the {}-byte "
             "data section: the file is truncated; re-download or re-save it",
             path, name, t.begin, t.end, data_size);
    TS_CHECK(
        t.nbytes() == expected_bytes,
        "safetensors {}: tensor '{}' spans {} bytes but shape {} of {} needs {}: the header is "
        "corrupt; re-save the file",
        path, name, t.nbytes(), shape_str(t.shape), dtype.get<std::string>(), expected_bytes);
    tensors_.push_back(std::move(t));
  }

  // The data section must be tiled exactly: every byte belongs to one tensor. Sorting by
  // offset (name breaks ties between empty tensors, for a deterministic order) turns that
  // into a check of neighbours.
  std::sort(tensors_.begin(), tensors_.end(), [](const auto& a, const auto& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  int64_t expect = 0;
  const SafetensorsTensor* previous = nullptr;
  for (const SafetensorsTensor& t : tensors_) {
    TS_CHECK(t.begin >= expect,
             "safetensors {}: tensor '{}' data_offsets [{}, {}] overlap tensor '{}' (which ends at "
             "{}): the header is corrupt; re-save the file",
             path, t.name, t.begin, t.end, previous ? previous->name : "", expect);
    TS_CHECK(t.begin == expect,
             "safetensors {}: gap of {} bytes before tensor '{}' (data_offsets [{}, {}], previous "
             "data ends at {}): offsets must be contiguous; re-save the file",
             path, t.begin - expect, t.name, t.begin, t.end, expect);
    expect = t.end;
    previous = &t;
  }
  TS_CHECK(expect == data_size,
           "safetensors {}: {} trailing bytes after the last tensor's data (tensors end at {}, the "
           "data section is {} bytes): the file is corrupt or was appended to; re-save it",
           path, data_size - expect, expect, data_size);
}

void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& entries,
                       const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps the header's keys in data order, so the file reads top to bottom.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header[kMetadataKey] = meta;
  }
  std::vector<int64_t> sizes;
  int64_t offset = 0;
  for (const SafetensorsEntry& e : entries) {
    TS_CHECK(!e.name.empty() && e.name != kMetadataKey, "safetensors {}: invalid tensor name '{}'",
             path, e.name);
    TS_CHECK(!header.contains(e.name), "safetensors {}: tensor '{}' given twice", path, e.name);
    TS_CHECK(e.fill != nullptr, "safetensors {}: tensor '{}' has no data", path, e.name);
    for (int64_t d : e.shape) {
      TS_CHECK(d >= 0, "safetensors {}: tensor '{}' has negative shape {}", path, e.name,
               shape_str(e.shape));
    }
    const int64_t bytes = shape_numel(e.shape) * static_cast<int64_t>(dtype_size(e.dtype));
    header[e.name] = {{"dtype", safetensors_dtype_name(e.dtype)},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    sizes.push_back(bytes);
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();

  const std::string tmp = temp_sibling(path);
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  TS_CHECK(f != nullptr,
           "safetensors {}: cannot create {}: {}; check the directory exists and is "
           "writable",
           path, tmp, errno_text());
  bool ok = std::fwrite(&header_len, 8, 1, f) == 1 &&
            std::fwrite(text.data(), 1, text.size(), f) == text.size();
  // One staging buffer of the largest tensor, tracked (category other) like every big buffer.
  const int64_t largest = sizes.empty() ? 0 : *std::max_element(sizes.begin(), sizes.end());
  Storage staging(static_cast<size_t>(largest), MemCategory::Other);
  auto* buffer = static_cast<std::byte*>(staging.data());
  for (size_t i = 0; ok && i < entries.size(); ++i) {
    const auto bytes = static_cast<size_t>(sizes[i]);
    std::memset(buffer, 0, bytes);
    try {
      entries[i].fill(buffer);
    } catch (...) {
      std::fclose(f);
      std::remove(tmp.c_str());
      throw;
    }
    ok = bytes == 0 || std::fwrite(buffer, 1, bytes, f) == bytes;
  }
  const std::string write_error = ok ? "" : errno_text();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    TS_THROW(InvalidArgument, "safetensors {}: write failed: {}; check free disk space", path,
             write_error.empty() ? errno_text() : write_error);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    std::remove(tmp.c_str());
    TS_THROW(InvalidArgument, "safetensors {}: cannot rename {} into place: {}", path, tmp, why);
  }
}

void encode_floats(const float* src, int64_t count, DType dtype, std::byte* bytes) {
  switch (dtype) {
    case DType::F32:
      // memcpy with a null pointer is undefined even for 0 bytes, and an empty tensor's
      // buffer (an empty std::vector's data()) may well be null.
      if (count > 0) std::memcpy(bytes, src, static_cast<size_t>(count) * 4);
      return;
    case DType::F16:
      for (int64_t i = 0; i < count; ++i) {
        const uint16_t h = f32_to_f16(src[i]);
        std::memcpy(bytes + 2 * i, &h, 2);
      }
      return;
    case DType::BF16:
      for (int64_t i = 0; i < count; ++i) {
        const uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(bytes + 2 * i, &h, 2);
      }
      return;
    default:
      TS_THROW(InvalidArgument, "encode_floats: dtype {} is not f32, f16 or bf16",
               dtype_name(dtype));
  }
}

void decode_floats(const std::byte* bytes, int64_t count, DType dtype, float* dst) {
  switch (dtype) {
    case DType::F32:
      if (count > 0) std::memcpy(dst, bytes, static_cast<size_t>(count) * 4);  // see encode_floats
      return;
    case DType::F16:
      for (int64_t i = 0; i < count; ++i) {
        uint16_t h;
        std::memcpy(&h, bytes + 2 * i, 2);
        dst[i] = f16_to_f32(h);
      }
      return;
    case DType::BF16:
      for (int64_t i = 0; i < count; ++i) {
        uint16_t h;
        std::memcpy(&h, bytes + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    default:
      TS_THROW(InvalidArgument, "decode_floats: dtype {} is not f32, f16 or bf16",
               dtype_name(dtype));
  }
}

}  // namespace tessera::models
