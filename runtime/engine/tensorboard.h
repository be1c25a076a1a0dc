// TensorBoard event files written directly, without TensorFlow or protobuf: TFRecord framing
// with masked CRC-32C around hand-encoded Event protobufs carrying scalar summaries. Also a
// reader for the same subset, which checks every CRC; the tests and tools use it to read
// back what the writer wrote.
//
// Wire format (tensorflow/core/util/event.proto, summary.proto), the fields used here:
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
//             Summary summary = 5; }
//   Summary { repeated Value value = 1; }
//   Value   { string tag = 1; float simple_value = 2; }
// A TFRecord is: uint64 length (little-endian), uint32 masked_crc32c(length bytes),
// the data, uint32 masked_crc32c(data).
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tessera::engine {

// Seconds since the Unix epoch, with sub-second precision (Event.wall_time).
double unix_time_now();

class EventWriter {
 public:
  // Creates run_dir if needed and starts events.out.tfevents.<unix time>.<hostname> in it
  // (".2", ".3", ... appended if that name is taken, so a restart within the same second
  // does not overwrite the previous file). The first record is the file_version event
  // TensorBoard expects.
  explicit EventWriter(const std::string& run_dir);
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  // One event with one scalar.
  void add_scalar(std::string_view tag, int64_t step, float value,
                  double wall_time = unix_time_now());
  // One event holding several scalars of the same step (one record instead of many).
  void add_scalars(int64_t step, const std::vector<std::pair<std::string, float>>& values,
                   double wall_time = unix_time_now());
  // Pushes buffered records to the file (TensorBoard reads files while they grow).
  void flush();

  const std::string& path() const { return path_; }

 private:
  void write_record(std::string_view data);

  std::string path_;
  std::ofstream out_;
};

// Encoders, exposed for tests.
std::string encode_tfrecord(std::string_view data);
std::string encode_file_version_event(double wall_time);
std::string encode_scalars_event(int64_t step, double wall_time,
                                 const std::vector<std::pair<std::string, float>>& values);

// What the reader recovers. Events without a summary other than file_version are skipped;
// so are summary values that are not simple_value scalars.
struct ScalarEvent {
  std::string tag;
  int64_t step = 0;
  float value = 0.0f;
  double wall_time = 0.0;
};
struct EventFileContents {
  std::string file_version;  // "brain.Event:2" for files TensorBoard accepts
  std::vector<ScalarEvent> scalars;
  int64_t num_records = 0;
};

// Splits TFRecord bytes into record payloads; throws Error naming the record and byte
// offset on a truncated record or a length/data CRC mismatch.
std::vector<std::string> decode_tfrecords(std::string_view bytes);
EventFileContents decode_event_file(std::string_view bytes);
EventFileContents read_event_file(const std::string& path);

// The event files in a run folder (names containing "tfevents", as TensorBoard matches them),
// sorted by name.
std::vector<std::string> find_event_files(const std::string& run_dir);

}  // namespace tessera::engine
