// CRC-32C against published vectors, and TensorBoard event files: exact wire bytes, the
// writer/reader round trip, and the reader's rejection of corrupted or truncated records.
#include "runtime/engine/tensorboard.h"

#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "engine_test_util.h"
#include "runtime/core/error.h"
#include "runtime/engine/crc32c.h"

namespace tessera::engine {
namespace {

using test_util::ScratchDir;

std::string bytes_of(std::initializer_list<int> values) {
  std::string s;
  for (int v : values) s.push_back(static_cast<char>(v));
  return s;
}

TEST(Crc32c, KnownVectors) {
  EXPECT_EQ(crc32c(std::string_view("123456789")), 0xE3069283u);
  EXPECT_EQ(crc32c(std::string_view("")), 0u);
  // RFC 3720 (iSCSI), appendix B.4.
  EXPECT_EQ(crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(crc32c(std::string(32, '\xFF')), 0x62A8AB43u);
  std::string ascending, descending;
  for (int i = 0; i < 32; ++i) {
    ascending.push_back(static_cast<char>(i));
    descending.push_back(static_cast<char>(31 - i));
  }
  EXPECT_EQ(crc32c(ascending), 0x46DD794Eu);
  EXPECT_EQ(crc32c(descending), 0x113FDB5Cu);
}

TEST(Crc32c, HardwareAndTableAgreeOnEveryLengthAndAlignment) {
  std::mt19937 rng(7);
  std::string buffer(300, '\0');
  for (char& c : buffer) c = static_cast<char>(rng());
  for (size_t offset = 0; offset < 9; ++offset) {
    for (size_t n = 0; n + offset <= buffer.size(); n += 7) {
      const char* p = buffer.data() + offset;
      ASSERT_EQ(crc32c_extend(0, p, n), crc32c_extend_portable(0, p, n))
          << "offset " << offset << " length " << n;
    }
  }
}

TEST(Crc32c, ExtendEqualsOneShot) {
  const std::string a = "The quick brown fox ", b = "jumps over the lazy dog";
  EXPECT_EQ(crc32c_extend(crc32c(a), b.data(), b.size()), crc32c(a + b));
  EXPECT_EQ(crc32c_extend_portable(crc32c(a), b.data(), b.size()), crc32c(a + b));
}

TEST(Crc32c, MaskIsTensorFlowsAndInvertible) {
  const uint32_t crc = crc32c(std::string_view("123456789"));
  const uint32_t rotated = (crc >> 15) | (crc << 17);
  EXPECT_EQ(mask_crc32c(crc), rotated + 0xa282ead8u);
  for (uint32_t x : {0u, 1u, 0xFFFFFFFFu, crc, 0x12345678u})
    EXPECT_EQ(unmask_crc32c(mask_crc32c(x)), x);
}

TEST(TensorBoard, EventWireBytesAreExact) {
  // Event{wall_time=1.0, step=1, summary{value{tag="a", simple_value=1.0f}}}.
  const std::string expected = bytes_of({0x09, 0,    0,   0,    0,   0, 0, 0xF0, 0x3F,  // wall_time
                                         0x10, 0x01,                                    // step
                                         0x2A, 0x0A,                                    // summary
                                         0x0A, 0x08,                                    // value
                                         0x0A, 0x01, 'a',                               // tag
                                         0x15, 0,    0,   0x80, 0x3F});  // simple_value
  EXPECT_EQ(encode_scalars_event(1, 1.0, {{"a", 1.0f}}), expected);

  const std::string version = encode_file_version_event(0.0);
  EXPECT_EQ(version, bytes_of({0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x1A, 13}) + "brain.Event:2");
}

TEST(TensorBoard, TfRecordFraming) {
  const std::string data = "hello";
  const std::string record = encode_tfrecord(data);
  ASSERT_EQ(record.size(), 8 + 4 + data.size() + 4);
  EXPECT_EQ(record.substr(0, 8), bytes_of({5, 0, 0, 0, 0, 0, 0, 0}));
  const auto le32 = [&](size_t at) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(record[at + i]);
    return v;
  };
  EXPECT_EQ(le32(8), mask_crc32c(crc32c(record.substr(0, 8))));
  EXPECT_EQ(record.substr(12, 5), data);
  EXPECT_EQ(le32(17), mask_crc32c(crc32c(data)));
  EXPECT_EQ(decode_tfrecords(record + encode_tfrecord("")),
            (std::vector<std::string>{"hello", ""}));
}

TEST(TensorBoard, RoundTripSeveralTagsAndSteps) {
  ScratchDir dir;
  std::string path;
  {
    EventWriter writer(dir.path().string());
    path = writer.path();
    for (int64_t step = 1; step <= 5; ++step) {
      writer.add_scalar("train/loss", step, 10.0f / static_cast<float>(step), 1000.0 + step);
      writer.add_scalar("train/lr", step, 1e-3f * static_cast<float>(step), 1000.5 + step);
    }
    writer.add_scalars(5, {{"val/loss", 2.25f}, {"perf/mfu", 0.125f}}, 2000.0);
    writer.add_scalar("edge/negative_step", -3, -1.5f, 3000.0);
    writer.add_scalar("edge/large_step", int64_t{1} << 40, 3.0e38f, 3001.0);
    writer.flush();
  }
  const std::string name = std::filesystem::path(path).filename().string();
  EXPECT_EQ(name.rfind("events.out.tfevents.", 0), 0u) << name;
  EXPECT_EQ(find_event_files(dir.path().string()), std::vector<std::string>{path});

  const EventFileContents contents = read_event_file(path);
  EXPECT_EQ(contents.file_version, "brain.Event:2");
  EXPECT_EQ(contents.num_records, 1 + 10 + 1 + 2);
  ASSERT_EQ(contents.scalars.size(), 14u);
  for (int64_t step = 1; step <= 5; ++step) {
    const ScalarEvent& loss = contents.scalars[2 * (step - 1)];
    const ScalarEvent& lr = contents.scalars[2 * (step - 1) + 1];
    EXPECT_EQ(loss.tag, "train/loss");
    EXPECT_EQ(loss.step, step);
    EXPECT_EQ(loss.value, 10.0f / static_cast<float>(step));
    EXPECT_EQ(loss.wall_time, 1000.0 + step);
    EXPECT_EQ(lr.tag, "train/lr");
    EXPECT_EQ(lr.value, 1e-3f * static_cast<float>(step));
    EXPECT_EQ(lr.wall_time, 1000.5 + step);
  }
  EXPECT_EQ(contents.scalars[10].tag, "val/loss");
  EXPECT_EQ(contents.scalars[10].value, 2.25f);
  EXPECT_EQ(contents.scalars[11].tag, "perf/mfu");
  EXPECT_EQ(contents.scalars[11].step, 5);
  EXPECT_EQ(contents.scalars[12].step, -3);
  EXPECT_EQ(contents.scalars[12].value, -1.5f);
  EXPECT_EQ(contents.scalars[13].step, int64_t{1} << 40);
  EXPECT_EQ(contents.scalars[13].value, 3.0e38f);
}

TEST(TensorBoard, TwoWritersInOneSecondGetTwoFiles) {
  ScratchDir dir;
  EventWriter a(dir.path().string());
  EventWriter b(dir.path().string());
  EXPECT_NE(a.path(), b.path());
  EXPECT_EQ(find_event_files(dir.path().string()).size(), 2u);
}

class CorruptedEventFile : public ::testing::Test {
 protected:
  void SetUp() override {
    EventWriter writer(dir_.path().string());
    writer.add_scalar("train/loss", 1, 3.5f, 100.0);
    writer.add_scalar("train/loss", 2, 3.25f, 101.0);
    writer.flush();
    path_ = writer.path();
    bytes_ = test_util::read_bytes(path_);
    ASSERT_NO_THROW(decode_event_file(bytes_));
    // The second record is the first scalar event.
    second_ = 16 + encode_file_version_event(0.0).size();
  }
  std::string rewrite(std::string bytes) {
    test_util::write_bytes(path_, bytes);
    return path_;
  }

  ScratchDir dir_;
  std::string path_, bytes_;
  size_t second_ = 0;
};

TEST_F(CorruptedEventFile, FlippedDataByteFailsTheDataCrc) {
  std::string bad = bytes_;
  bad[second_ + 12 + 3] ^= 0x01;
  const std::string msg =
      test_util::message_of<InvalidArgument>([&] { read_event_file(rewrite(bad)); });
  EXPECT_TRUE(test_util::Contains(msg, "TFRecord 1"));
  EXPECT_TRUE(test_util::Contains(msg, "data's CRC"));
}

TEST_F(CorruptedEventFile, FlippedLengthByteFailsTheLengthCrc) {
  std::string bad = bytes_;
  bad[second_] ^= 0x04;
  const std::string msg =
      test_util::message_of<InvalidArgument>([&] { read_event_file(rewrite(bad)); });
  EXPECT_TRUE(test_util::Contains(msg, "length's CRC"));
}

TEST_F(CorruptedEventFile, FlippedCrcByteIsDetected) {
  std::string bad = bytes_;
  bad[bad.size() - 1] ^= 0x80;  // the last record's data CRC
  EXPECT_THROW(read_event_file(rewrite(bad)), InvalidArgument);
}

TEST_F(CorruptedEventFile, TruncatedFileIsDetected) {
  for (size_t cut : {size_t{1}, size_t{4}, size_t{5}, size_t{20}}) {
    const std::string msg = test_util::message_of<InvalidArgument>(
        [&] { read_event_file(rewrite(bytes_.substr(0, bytes_.size() - cut))); });
    EXPECT_TRUE(test_util::Contains(msg, "TFRecord 2")) << "cut " << cut;
  }
}

TEST(TensorBoard, ReaderSkipsUnknownFields) {
  // A newer writer's extra fields (a varint 7, a fixed64 9, a string 11) must not confuse
  // the reader: it skips by wire type.
  std::string event = encode_scalars_event(4, 5.0, {{"x", 0.5f}});
  event += bytes_of({0x38, 0x96, 0x01, 0x49, 1, 2, 3, 4, 5, 6, 7, 8, 0x5A, 2, 'h', 'i'});
  const EventFileContents c = decode_event_file(encode_tfrecord(event));
  ASSERT_EQ(c.scalars.size(), 1u);
  EXPECT_EQ(c.scalars[0].tag, "x");
  EXPECT_EQ(c.scalars[0].step, 4);
  EXPECT_EQ(c.scalars[0].value, 0.5f);
}

}  // namespace
}  // namespace tessera::engine
