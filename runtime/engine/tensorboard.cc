#include "runtime/engine/tensorboard.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "runtime/core/error.h"
#include "runtime/engine/crc32c.h"

namespace tessera::engine {
namespace {

namespace fs = std::filesystem;

constexpr const char* kFileVersion = "brain.Event:2";

// Protobuf wire types.
constexpr uint32_t kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5;

// Field numbers (event.proto, summary.proto).
constexpr uint32_t kEventWallTime = 1, kEventStep = 2, kEventFileVersion = 3, kEventSummary = 5;
constexpr uint32_t kSummaryValue = 1;
constexpr uint32_t kValueTag = 1, kValueSimpleValue = 2;

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void put_key(std::string& out, uint32_t field, uint32_t wire_type) {
  put_varint(out, (uint64_t{field} << 3) | wire_type);
}

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

void put_bytes_field(std::string& out, uint32_t field, std::string_view bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out.append(bytes);
}

uint64_t get_le(std::string_view bytes, size_t offset, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(bytes[offset + i]);
  return v;
}

// Walks the fields of one protobuf message; knows every wire type so that fields this
// reader does not use (a newer writer's, TensorBoard's own) are skipped, not misread.
class ProtoReader {
 public:
  explicit ProtoReader(std::string_view bytes) : bytes_(bytes) {}

  bool next() {
    if (pos_ == bytes_.size()) return false;
    const uint64_t key = varint();
    field_ = static_cast<uint32_t>(key >> 3);
    wire_type_ = static_cast<uint32_t>(key & 7);
    switch (wire_type_) {
      case kVarint:
        scalar_ = varint();
        break;
      case kFixed64:
        scalar_ = fixed(8);
        break;
      case kFixed32:
        scalar_ = fixed(4);
        break;
      case kLengthDelimited: {
        const uint64_t n = varint();
        TS_CHECK(n <= bytes_.size() - pos_, "protobuf field {} claims {} bytes, {} left", field_, n,
                 bytes_.size() - pos_);
        payload_ = bytes_.substr(pos_, n);
        pos_ += n;
        break;
      }
      default:
        TS_THROW(InvalidArgument, "protobuf field {} has unsupported wire type {}", field_,
                 wire_type_);
    }
    return true;
  }

  uint32_t field() const { return field_; }
  uint32_t wire_type() const { return wire_type_; }
  uint64_t scalar() const { return scalar_; }
  std::string_view payload() const { return payload_; }

 private:
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      TS_CHECK(pos_ < bytes_.size(), "protobuf varint runs past the end of the message");
      const auto b = static_cast<unsigned char>(bytes_[pos_++]);
      v |= uint64_t{b & 0x7Fu} << shift;
      if ((b & 0x80) == 0) return v;
    }
    TS_THROW(InvalidArgument, "protobuf varint longer than 10 bytes");
  }
  uint64_t fixed(int n) {
    TS_CHECK(bytes_.size() - pos_ >= static_cast<size_t>(n),
             "protobuf fixed{} field runs past the end of the message", n * 8);
    const uint64_t v = get_le(bytes_, pos_, n);
    pos_ += n;
    return v;
  }

  std::string_view bytes_;
  size_t pos_ = 0;
  uint32_t field_ = 0, wire_type_ = 0;
  uint64_t scalar_ = 0;
  std::string_view payload_;
};

std::string hostname() {
  std::array<char, 256> name{};
  if (::gethostname(name.data(), name.size() - 1) != 0 || name[0] == '\0') return "localhost";
  return name.data();
}

void decode_summary(std::string_view summary, int64_t step, double wall_time,
                    std::vector<ScalarEvent>& out) {
  ProtoReader r(summary);
  while (r.next()) {
    if (r.field() != kSummaryValue || r.wire_type() != kLengthDelimited) continue;
    ScalarEvent ev;
    ev.step = step;
    ev.wall_time = wall_time;
    bool has_simple_value = false;
    ProtoReader v(r.payload());
    while (v.next()) {
      if (v.field() == kValueTag && v.wire_type() == kLengthDelimited) {
        ev.tag = std::string(v.payload());
      } else if (v.field() == kValueSimpleValue && v.wire_type() == kFixed32) {
        ev.value = std::bit_cast<float>(static_cast<uint32_t>(v.scalar()));
        has_simple_value = true;
      }
    }
    if (has_simple_value) out.push_back(std::move(ev));
  }
}

}  // namespace

double unix_time_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string encode_tfrecord(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 16);
  put_le(out, data.size(), 8);
  put_le(out, masked_crc32c(std::string_view(out.data(), 8)), 4);
  out.append(data);
  put_le(out, masked_crc32c(data), 4);
  return out;
}

std::string encode_file_version_event(double wall_time) {
  std::string ev;
  put_key(ev, kEventWallTime, kFixed64);
  put_le(ev, std::bit_cast<uint64_t>(wall_time), 8);
  put_bytes_field(ev, kEventFileVersion, kFileVersion);
  return ev;
}

std::string encode_scalars_event(int64_t step, double wall_time,
                                 const std::vector<std::pair<std::string, float>>& values) {
  std::string summary;
  for (const auto& [tag, value] : values) {
    std::string v;
    put_bytes_field(v, kValueTag, tag);
    put_key(v, kValueSimpleValue, kFixed32);
    put_le(v, std::bit_cast<uint32_t>(value), 4);
    put_bytes_field(summary, kSummaryValue, v);
  }
  std::string ev;
  put_key(ev, kEventWallTime, kFixed64);
  put_le(ev, std::bit_cast<uint64_t>(wall_time), 8);
  put_key(ev, kEventStep, kVarint);
  // int64 fields are plain varints of the two's complement (negative steps take 10 bytes).
  put_varint(ev, static_cast<uint64_t>(step));
  put_bytes_field(ev, kEventSummary, summary);
  return ev;
}

EventWriter::EventWriter(const std::string& run_dir) {
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  TS_CHECK(!ec, "cannot create the run folder {}: {}", run_dir, ec.message());
  const double now = unix_time_now();
  const std::string base = (fs::path(run_dir) / fmt::format("events.out.tfevents.{}.{}",
                                                            static_cast<int64_t>(now), hostname()))
                               .string();
  path_ = base;
  for (int n = 2; fs::exists(path_); ++n) path_ = fmt::format("{}.{}", base, n);
  out_.open(path_, std::ios::binary | std::ios::trunc);
  TS_CHECK(out_.good(), "cannot write the TensorBoard event file {}: check the run folder", path_);
  write_record(encode_file_version_event(now));
  flush();
}

void EventWriter::add_scalar(std::string_view tag, int64_t step, float value, double wall_time) {
  add_scalars(step, {{std::string(tag), value}}, wall_time);
}

void EventWriter::add_scalars(int64_t step,
                              const std::vector<std::pair<std::string, float>>& values,
                              double wall_time) {
  if (values.empty()) return;
  write_record(encode_scalars_event(step, wall_time, values));
}

void EventWriter::flush() {
  out_.flush();
  TS_CHECK(out_.good(), "writing {} failed (disk full?)", path_);
}

void EventWriter::write_record(std::string_view data) {
  const std::string record = encode_tfrecord(data);
  out_.write(record.data(), static_cast<std::streamsize>(record.size()));
  TS_CHECK(out_.good(), "writing {} failed (disk full?)", path_);
}

std::vector<std::string> decode_tfrecords(std::string_view bytes) {
  std::vector<std::string> records;
  size_t pos = 0;
  while (pos < bytes.size()) {
    const size_t index = records.size();
    TS_CHECK(bytes.size() - pos >= 12, "TFRecord {} at byte {}: truncated header ({} bytes left)",
             index, pos, bytes.size() - pos);
    const uint64_t length = get_le(bytes, pos, 8);
    const auto length_crc = static_cast<uint32_t>(get_le(bytes, pos + 8, 4));
    TS_CHECK(masked_crc32c(bytes.substr(pos, 8)) == length_crc,
             "TFRecord {} at byte {}: the length's CRC does not match (corrupted file)", index,
             pos);
    TS_CHECK(length <= bytes.size() - pos - 12 && bytes.size() - pos - 12 - length >= 4,
             "TFRecord {} at byte {}: {} data bytes announced, the file ends first", index, pos,
             length);
    const std::string_view data = bytes.substr(pos + 12, length);
    const auto data_crc = static_cast<uint32_t>(get_le(bytes, pos + 12 + length, 4));
    TS_CHECK(masked_crc32c(data) == data_crc,
             "TFRecord {} at byte {}: the data's CRC does not match (corrupted file)", index, pos);
    records.emplace_back(data);
    pos += 12 + length + 4;
  }
  return records;
}

EventFileContents decode_event_file(std::string_view bytes) {
  EventFileContents contents;
  for (const std::string& record : decode_tfrecords(bytes)) {
    ++contents.num_records;
    double wall_time = 0.0;
    int64_t step = 0;
    std::string_view summary;
    bool has_summary = false;
    ProtoReader r(record);
    while (r.next()) {
      if (r.field() == kEventWallTime && r.wire_type() == kFixed64) {
        wall_time = std::bit_cast<double>(r.scalar());
      } else if (r.field() == kEventStep && r.wire_type() == kVarint) {
        step = static_cast<int64_t>(r.scalar());
      } else if (r.field() == kEventFileVersion && r.wire_type() == kLengthDelimited) {
        contents.file_version = std::string(r.payload());
      } else if (r.field() == kEventSummary && r.wire_type() == kLengthDelimited) {
        summary = r.payload();
        has_summary = true;
      }
    }
    // The step may follow the summary on the wire, so values are decoded after the event.
    if (has_summary) decode_summary(summary, step, wall_time, contents.scalars);
  }
  return contents;
}

EventFileContents read_event_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TS_CHECK(in.good(), "cannot open the event file {}", path);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  try {
    return decode_event_file(bytes);
  } catch (const InvalidArgument& e) {
    TS_THROW(InvalidArgument, "{}: {}", path, e.what());
  }
}

std::vector<std::string> find_event_files(const std::string& run_dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(run_dir, ec)) {
    if (entry.is_regular_file() &&
        entry.path().filename().string().find("tfevents") != std::string::npos) {
      files.push_back(entry.path().string());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace tessera::engine
