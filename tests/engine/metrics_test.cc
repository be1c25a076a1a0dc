// MetricsLogger: the JSONL lines, the TensorBoard scalars (read back with the in-repo
// reader), rank 0 as the only writer, the console modes and MFU; and `tessera plot`: a PNG
// whose chunks, zlib stream and size this file checks with its own minimal decoder.
#include "runtime/engine/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine_test_util.h"
#include "runtime/core/error.h"
#include "runtime/engine/plot.h"
#include "runtime/engine/tensorboard.h"

namespace tessera::engine {
namespace {

using test_util::Contains;
using test_util::ScratchDir;

StepMetrics sample_step(int64_t step) {
  StepMetrics m;
  m.step = step;
  m.loss = 5.0 / static_cast<double>(step);
  m.lr = 1e-3 * static_cast<double>(step);
  m.grad_norm = 0.5 + static_cast<double>(step);
  m.tokens_per_s = 1000.0 * static_cast<double>(step);
  m.ms = 20.0 + static_cast<double>(step);
  m.gflops = 2.5 * static_cast<double>(step);
  m.mfu = 0.01 * static_cast<double>(step);
  for (int c = 0; c < kNumMemCategories; ++c) {
    m.memory.current[c] = 1000 * (c + 1) + step;
    m.memory.peak[c] = 2000 * (c + 1) + step;
  }
  m.memory.total_current = 123456 + step;
  m.memory.total_peak = 234567 + step;
  return m;
}

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

MetricsOptions quiet_options(const std::string& run_dir, int64_t total_steps) {
  MetricsOptions o;
  o.run_dir = run_dir;
  o.total_steps = total_steps;
  o.console = ConsoleMode::Off;
  return o;
}

TEST(MetricsLogger, JsonlHasOneParsableLinePerStepWithEveryKey) {
  ScratchDir dir;
  const std::string run = dir.file("run");
  {
    MetricsLogger logger(quiet_options(run, 3));
    logger.log_step(sample_step(1));
    StepMetrics second = sample_step(2);
    second.val_loss = 2.75;
    second.loss_scale = 65536.0;
    second.skipped_steps = 1;
    second.overflow_count = 2;
    logger.log_step(second);
    logger.log_step(sample_step(3));
  }
  const auto lines = read_jsonl(run + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), 3u);
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto& j = lines[i];
    const StepMetrics m = sample_step(static_cast<int64_t>(i) + 1);
    for (const char* key : {"step", "loss", "lr", "grad_norm", "tokens_per_s", "ms", "gflops",
                            "mfu", "wall_time", "mem_total", "mem_peak_total"}) {
      EXPECT_TRUE(j.contains(key)) << "line " << i << " lacks " << key;
    }
    EXPECT_EQ(j["step"].get<int64_t>(), m.step);
    EXPECT_DOUBLE_EQ(j["loss"].get<double>(), m.loss);
    EXPECT_DOUBLE_EQ(j["lr"].get<double>(), m.lr);
    EXPECT_DOUBLE_EQ(j["grad_norm"].get<double>(), m.grad_norm);
    EXPECT_DOUBLE_EQ(j["tokens_per_s"].get<double>(), m.tokens_per_s);
    EXPECT_DOUBLE_EQ(j["ms"].get<double>(), m.ms);
    EXPECT_DOUBLE_EQ(j["gflops"].get<double>(), m.gflops);
    EXPECT_DOUBLE_EQ(j["mfu"].get<double>(), m.mfu);
    for (int c = 0; c < kNumMemCategories; ++c) {
      const std::string name(mem_category_name(static_cast<MemCategory>(c)));
      EXPECT_EQ(j["mem_" + name].get<int64_t>(), m.memory.current[c]) << name;
      EXPECT_EQ(j["mem_peak_" + name].get<int64_t>(), m.memory.peak[c]) << name;
    }
    EXPECT_EQ(j["mem_total"].get<int64_t>(), m.memory.total_current);
  }
  // Optional keys appear exactly where they were given.
  for (const char* key : {"val_loss", "loss_scale", "skipped_steps", "overflow_count"}) {
    EXPECT_FALSE(lines[0].contains(key)) << key;
    EXPECT_TRUE(lines[1].contains(key)) << key;
    EXPECT_FALSE(lines[2].contains(key)) << key;
  }
  EXPECT_DOUBLE_EQ(lines[1]["val_loss"].get<double>(), 2.75);
  EXPECT_DOUBLE_EQ(lines[1]["loss_scale"].get<double>(), 65536.0);
  EXPECT_EQ(lines[1]["skipped_steps"].get<int64_t>(), 1);
  EXPECT_EQ(lines[1]["overflow_count"].get<int64_t>(), 2);
}

TEST(MetricsLogger, TensorBoardFileReadsBackTheSameNumbers) {
  ScratchDir dir;
  const std::string run = dir.file("run");
  std::string event_path;
  {
    MetricsLogger logger(quiet_options(run, 4));
    event_path = logger.event_file_path();
    for (int64_t s = 1; s <= 4; ++s) {
      StepMetrics m = sample_step(s);
      if (s == 4) m.val_loss = 1.5;
      logger.log_step(m);
    }
  }
  ASSERT_FALSE(event_path.empty());
  EXPECT_EQ(find_event_files(run), std::vector<std::string>{event_path});
  const EventFileContents contents = read_event_file(event_path);
  EXPECT_EQ(contents.file_version, "brain.Event:2");
  std::map<std::string, std::map<int64_t, float>> by_tag;
  for (const ScalarEvent& e : contents.scalars) by_tag[e.tag][e.step] = e.value;
  for (int64_t s = 1; s <= 4; ++s) {
    const StepMetrics m = sample_step(s);
    EXPECT_EQ(by_tag["train/loss"][s], static_cast<float>(m.loss));
    EXPECT_EQ(by_tag["train/lr"][s], static_cast<float>(m.lr));
    EXPECT_EQ(by_tag["train/grad_norm"][s], static_cast<float>(m.grad_norm));
    EXPECT_EQ(by_tag["perf/tokens_per_s"][s], static_cast<float>(m.tokens_per_s));
    EXPECT_EQ(by_tag["perf/gflops"][s], static_cast<float>(m.gflops));
    EXPECT_EQ(by_tag["perf/mfu"][s], static_cast<float>(m.mfu));
    EXPECT_EQ(by_tag["perf/step_ms"][s], static_cast<float>(m.ms));
    for (int c = 0; c < kNumMemCategories; ++c) {
      const std::string tag =
          "memory/" + std::string(mem_category_name(static_cast<MemCategory>(c))) + "_bytes";
      EXPECT_EQ(by_tag[tag][s], static_cast<float>(m.memory.current[c])) << tag;
    }
  }
  ASSERT_EQ(by_tag["val/loss"].size(), 1u);
  EXPECT_EQ(by_tag["val/loss"][4], 1.5f);
  EXPECT_EQ(by_tag.count("train/loss_scale"), 0u);
}

TEST(MetricsLogger, OtherRanksWriteNothing) {
  ScratchDir dir;
  const std::string run = dir.file("run_rank1");
  MetricsOptions o = quiet_options(run, 2);
  o.rank = 1;
  o.console = ConsoleMode::Progress;
  std::FILE* console = std::tmpfile();
  ASSERT_NE(console, nullptr);
  o.console_stream = console;
  {
    MetricsLogger logger(o);
    EXPECT_FALSE(logger.writes());
    logger.log_step(sample_step(1));
    logger.log_step(sample_step(2));
    EXPECT_EQ(logger.event_file_path(), "");
  }
  EXPECT_FALSE(std::filesystem::exists(run));
  EXPECT_EQ(std::ftell(console), 0L);
  std::fclose(console);
}

TEST(MetricsLogger, WithoutTensorBoardOnlyJsonl) {
  ScratchDir dir;
  MetricsOptions o = quiet_options(dir.file("run"), 1);
  o.tensorboard = false;
  {
    MetricsLogger logger(o);
    logger.log_step(sample_step(1));
  }
  EXPECT_TRUE(std::filesystem::exists(dir.file("run/metrics.jsonl")));
  EXPECT_TRUE(find_event_files(dir.file("run")).empty());
}

std::string read_stream(std::FILE* f) {
  std::rewind(f);
  std::string s;
  for (int c; (c = std::fgetc(f)) != EOF;) s.push_back(static_cast<char>(c));
  return s;
}

TEST(MetricsLogger, ProgressBarRedrawsInPlaceAndEndsTheLine) {
  ScratchDir dir;
  MetricsOptions o = quiet_options(dir.file("run"), 3);
  o.console = ConsoleMode::Progress;
  std::FILE* console = std::tmpfile();
  ASSERT_NE(console, nullptr);
  o.console_stream = console;
  {
    MetricsLogger logger(o);
    EXPECT_TRUE(logger.progress_bar());
    for (int64_t s = 1; s <= 3; ++s) logger.log_step(sample_step(s));
  }
  const std::string out = read_stream(console);
  std::fclose(console);
  EXPECT_TRUE(Contains(out, "\r[")) << out;
  EXPECT_TRUE(Contains(out, "3/3 | loss 1.6667"));
  EXPECT_TRUE(Contains(out, "ETA "));
  // One line in all: the bar is redrawn with \r, and a newline ends it after the last step.
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_EQ(out.back(), '\n');
}

TEST(MetricsLogger, PlainConsoleNeverDrawsTheBar) {
  ScratchDir dir;
  MetricsOptions o = quiet_options(dir.file("run"), 2);
  o.console = ConsoleMode::Plain;
  std::FILE* console = std::tmpfile();
  o.console_stream = console;
  {
    MetricsLogger logger(o);
    EXPECT_FALSE(logger.progress_bar());
    logger.log_step(sample_step(1));
    logger.log_step(sample_step(2));
  }
  EXPECT_EQ(read_stream(console), "");
  std::fclose(console);
}

TEST(MetricsLogger, AutoModeChecksTheStreamIsATerminal) {
  ScratchDir dir;
  MetricsOptions o = quiet_options(dir.file("run"), 2);
  o.console = ConsoleMode::Auto;
  std::FILE* file = std::tmpfile();
  o.console_stream = file;  // a file is never a terminal
  MetricsLogger logger(o);
  EXPECT_FALSE(logger.progress_bar());
  std::fclose(file);
}

TEST(MetricsLogger, ConsoleLine) {
  MetricsOptions o = quiet_options("unused", 100);
  o.rank = 1;  // formats without creating the folder
  MetricsLogger logger(o);
  StepMetrics m = sample_step(7);
  EXPECT_EQ(logger.format_line(m).substr(0, 30), "step   7/100 | loss 0.7143 | l");
  EXPECT_TRUE(Contains(logger.format_line(m), "MFU 7.0%"));
  EXPECT_TRUE(test_util::Lacks(logger.format_line(m), "val"));
  m.val_loss = 0.5;
  EXPECT_TRUE(Contains(logger.format_line(m), "| val 0.5000 |"));
  EXPECT_TRUE(
      Contains(logger.format_progress(m, 125.0), "7/100 | loss 0.7143 | 7000 tok/s | ETA 2m05s"));
  EXPECT_TRUE(Contains(logger.format_progress(m, NAN), "ETA ?"));
}

TEST(Mfu, FormulaAndPeakSetting) {
  // 1000 tok/s x 1 GFLOP/token over 2 ranks x 100 GFLOP/s = 5 (i.e. 500%).
  EXPECT_DOUBLE_EQ(model_flops_utilization(1000, 1e9, 2, 100), 5.0);
  EXPECT_DOUBLE_EQ(model_flops_utilization(0, 1e9, 1, 100), 0.0);
  EXPECT_THROW(model_flops_utilization(1, 1, 0, 100), InvalidArgument);

  ::unsetenv("TESSERA_PEAK_GFLOPS");
  EXPECT_DOUBLE_EQ(peak_gflops_per_rank(4), 4 * kPeakGflopsPerThread);
  EXPECT_DOUBLE_EQ(peak_gflops_per_rank(0), kPeakGflopsPerThread);
  ::setenv("TESSERA_PEAK_GFLOPS", "312.5", 1);
  EXPECT_DOUBLE_EQ(peak_gflops_per_rank(4), 312.5);
  ::setenv("TESSERA_PEAK_GFLOPS", "fast", 1);
  EXPECT_TRUE(Contains(test_util::message_of<InvalidArgument>([] { peak_gflops_per_rank(1); }),
                       "TESSERA_PEAK_GFLOPS='fast'"));
  ::unsetenv("TESSERA_PEAK_GFLOPS");
}

// ---- plot ----------------------------------------------------------------------------------

// An independent, bit-at-a-time CRC-32 and Adler-32, so the test does not trust plot.cc's.
uint32_t crc32_bitwise(const std::string& bytes) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char b : bytes) {
    crc ^= b;
    for (int i = 0; i < 8; ++i) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

uint32_t adler32_slow(const std::string& bytes) {
  uint64_t a = 1, b = 0;
  for (unsigned char c : bytes) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  return static_cast<uint32_t>((b << 16) | a);
}

uint32_t be32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(s.at(at + i));
  return v;
}

struct DecodedPng {
  uint32_t width = 0, height = 0;
  int bit_depth = 0, colour_type = 0;
  std::string palette;
  std::string raw;  // scanlines, each with its filter byte
};

// Decodes what encode_png writes (palette, stored deflate blocks), checking every CRC, the
// zlib header and the Adler-32 on the way; anything else fails the test.
DecodedPng decode_png(const std::string& png) {
  DecodedPng out;
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  std::string idat;
  std::vector<std::string> order;
  size_t pos = 8;
  while (pos + 12 <= png.size()) {
    const uint32_t length = be32(png, pos);
    const std::string type = png.substr(pos + 4, 4);
    const std::string data = png.substr(pos + 8, length);
    EXPECT_EQ(be32(png, pos + 8 + length), crc32_bitwise(type + data)) << "chunk " << type;
    order.push_back(type);
    if (type == "IHDR") {
      out.width = be32(data, 0);
      out.height = be32(data, 4);
      out.bit_depth = data[8];
      out.colour_type = data[9];
    } else if (type == "PLTE") {
      out.palette = data;
    } else if (type == "IDAT") {
      idat += data;
    }
    pos += 12 + length;
  }
  EXPECT_EQ(pos, png.size()) << "bytes after the last chunk";
  EXPECT_EQ(order.front(), "IHDR");
  EXPECT_EQ(order.back(), "IEND");

  const auto cmf = static_cast<unsigned char>(idat.at(0));
  const auto flg = static_cast<unsigned char>(idat.at(1));
  EXPECT_EQ(cmf & 0x0F, 8) << "zlib method must be deflate";
  EXPECT_EQ((cmf * 256 + flg) % 31, 0) << "zlib header check bits";
  size_t z = 2;
  bool final = false;
  while (!final) {
    const auto header = static_cast<unsigned char>(idat.at(z));
    final = header & 1;
    EXPECT_EQ((header >> 1) & 3, 0) << "only stored blocks are expected";
    const uint32_t len = static_cast<unsigned char>(idat.at(z + 1)) |
                         static_cast<unsigned char>(idat.at(z + 2)) << 8;
    const uint32_t nlen = static_cast<unsigned char>(idat.at(z + 3)) |
                          static_cast<unsigned char>(idat.at(z + 4)) << 8;
    EXPECT_EQ(len ^ 0xFFFFu, nlen);
    out.raw += idat.substr(z + 5, len);
    z += 5 + len;
  }
  EXPECT_EQ(be32(idat, z), adler32_slow(out.raw));
  EXPECT_EQ(z + 4, idat.size());
  return out;
}

void write_metrics(const std::string& run_dir, int steps, int eval_every, bool truncate_last) {
  std::filesystem::create_directories(run_dir);
  std::ofstream out(run_dir + "/metrics.jsonl");
  for (int s = 1; s <= steps; ++s) {
    nlohmann::json j = {{"step", s},
                        {"loss", 4.0 * std::exp(-s / 40.0) + 1.5 + 0.05 * std::sin(s)}};
    if (s % eval_every == 0) j["val_loss"] = 4.0 * std::exp(-s / 40.0) + 1.7;
    out << j.dump() << "\n";
  }
  if (truncate_last) out << "{\"step\": " << steps + 1 << ", \"lo";
}

TEST(Plot, WritesAValidPngOfTheRequestedSize) {
  ScratchDir dir;
  const std::string run = dir.file("run");
  write_metrics(run, 200, 25, /*truncate_last=*/true);
  const std::string out = dir.file("curves.png");
  EXPECT_EQ(run_plot(run, out, 640, 400), 0);
  const DecodedPng png = decode_png(test_util::read_bytes(out));
  EXPECT_EQ(png.width, 640u);
  EXPECT_EQ(png.height, 400u);
  EXPECT_EQ(png.bit_depth, 8);
  EXPECT_EQ(png.colour_type, 3);
  ASSERT_EQ(png.raw.size(), 400u * (640 + 1));
  ASSERT_EQ(png.palette.size() % 3, 0u);
  // Both curves are drawn: count the pixels of the train (blue) and validation (orange)
  // palette entries.
  std::map<std::string, size_t> by_colour;
  for (uint32_t y = 0; y < png.height; ++y) {
    EXPECT_EQ(png.raw[y * (png.width + 1)], '\0') << "filter of row " << y;
    for (uint32_t x = 0; x < png.width; ++x) {
      const auto index = static_cast<unsigned char>(png.raw[y * (png.width + 1) + 1 + x]);
      ASSERT_LT(index * 3u, png.palette.size());
      by_colour[png.palette.substr(index * 3, 3)]++;
    }
  }
  EXPECT_GT(by_colour[std::string("\x1f\x77\xb4", 3)], 500u) << "train curve";
  EXPECT_GT(by_colour[std::string("\xff\x7f\x0e", 3)], 100u) << "validation curve";
  EXPECT_GT(by_colour[std::string("\xff\xff\xff", 3)], 640u * 400 / 2) << "background";
}

TEST(Plot, DefaultOutputIsInTheRunFolder) {
  ScratchDir dir;
  const std::string run = dir.file("run");
  write_metrics(run, 10, 1000, false);
  EXPECT_EQ(run_plot(run, ""), 0);
  const DecodedPng png = decode_png(test_util::read_bytes(run + "/loss.png"));
  EXPECT_EQ(png.width, static_cast<uint32_t>(kDefaultPlotWidth));
  EXPECT_EQ(png.height, static_cast<uint32_t>(kDefaultPlotHeight));
}

TEST(Plot, OneStepAndConstantLossStillPlot) {
  LossCurves curves;
  curves.train = {{1, 3.0}};
  const IndexedImage img = render_loss_plot(curves, 200, 150);
  EXPECT_EQ(img.pixels.size(), 200u * 150);
  const DecodedPng png = decode_png(encode_png(img));
  EXPECT_EQ(png.width, 200u);
}

TEST(Plot, LargeImagesSpanSeveralStoredBlocks) {
  LossCurves curves;
  for (int s = 1; s <= 50; ++s) curves.train.emplace_back(s, 1.0 / s);
  const DecodedPng png = decode_png(encode_png(render_loss_plot(curves, 1000, 700)));
  EXPECT_EQ(png.raw.size(), 700u * 1001);  // > 65535: ten stored blocks, all checked above
}

TEST(Plot, Errors) {
  ScratchDir dir;
  EXPECT_TRUE(
      Contains(test_util::message_of<InvalidArgument>([&] { run_plot(dir.file("nope"), ""); }),
               "no metrics.jsonl in"));
  const std::string run = dir.file("run");
  std::filesystem::create_directories(run);
  test_util::write_bytes(run + "/metrics.jsonl",
                         "{\"step\": 1, \"loss\": 2}\nnot json\n{\"step\": 3, \"loss\": 1}\n");
  EXPECT_TRUE(Contains(test_util::message_of<InvalidArgument>([&] { run_plot(run, ""); }),
                       "line 2 is not JSON"));
  LossCurves curves;
  curves.train = {{1, 2.0}};
  EXPECT_THROW(render_loss_plot(curves, 10, 10), InvalidArgument);
}

}  // namespace
}  // namespace tessera::engine
