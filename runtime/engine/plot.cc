#include "runtime/engine/plot.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "runtime/core/error.h"

namespace tessera::engine {
namespace {

namespace fs = std::filesystem;

// Palette indices.
enum Colour : uint8_t { kWhite, kBlack, kGrid, kFrame, kTrain, kVal };
const std::vector<std::array<uint8_t, 3>> kPalette = {
    {255, 255, 255}, {0, 0, 0},      {225, 225, 225},
    {120, 120, 120}, {31, 119, 180},  // matplotlib's first two colours, familiar to anyone reading
                                      // loss plots
    {255, 127, 14}};

// ---- text: a 5x7 bitmap font with the characters tick labels and the legend use ----------

struct Glyph {
  char c;
  std::array<uint8_t, 7> rows;  // 5 bits per row, the leftmost pixel in bit 4
};

constexpr Glyph kFont[] = {
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}},
    {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}},
    {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}},
    {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}},
    {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}},
    {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}},
    {'-', {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}},
    {'+', {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00}},
    {'a', {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F}},
    {'e', {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E}},
    {'i', {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E}},
    {'l', {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'n', {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11}},
    {'o', {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E}},
    {'p', {0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10}},
    {'r', {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10}},
    {'s', {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E}},
    {'t', {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06}},
    {'v', {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04}},
};
constexpr int kGlyphW = 5, kGlyphH = 7, kGlyphAdvance = 6;

class Canvas {
 public:
  Canvas(int width, int height) {
    image_.width = width;
    image_.height = height;
    image_.pixels.assign(static_cast<size_t>(width) * height, kWhite);
    image_.palette = kPalette;
  }

  void set(int x, int y, uint8_t c) {
    if (x >= 0 && y >= 0 && x < image_.width && y < image_.height) {
      image_.pixels[static_cast<size_t>(y) * image_.width + x] = c;
    }
  }
  void fill_rect(int x0, int y0, int x1, int y1, uint8_t c) {  // inclusive corners
    for (int y = std::min(y0, y1); y <= std::max(y0, y1); ++y) {
      for (int x = std::min(x0, x1); x <= std::max(x0, x1); ++x) set(x, y, c);
    }
  }
  void rect(int x0, int y0, int x1, int y1, uint8_t c) {
    fill_rect(x0, y0, x1, y0, c);
    fill_rect(x0, y1, x1, y1, c);
    fill_rect(x0, y0, x0, y1, c);
    fill_rect(x1, y0, x1, y1, c);
  }
  // Bresenham, each point stamped as a thickness x thickness square.
  void line(int x0, int y0, int x1, int y1, uint8_t c, int thickness) {
    const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0);
    const int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    const int lo = -(thickness - 1) / 2, hi = thickness / 2;
    while (true) {
      fill_rect(x0 + lo, y0 + lo, x0 + hi, y0 + hi, c);
      if (x0 == x1 && y0 == y1) break;
      const int e2 = 2 * err;
      if (e2 >= dy) {
        err += dy;
        x0 += sx;
      }
      if (e2 <= dx) {
        err += dx;
        y0 += sy;
      }
    }
  }
  void text(int x, int y, const std::string& s, uint8_t c, int scale) {
    for (char ch : s) {
      for (const Glyph& g : kFont) {
        if (g.c != ch) continue;
        for (int row = 0; row < kGlyphH; ++row) {
          for (int col = 0; col < kGlyphW; ++col) {
            if ((g.rows[row] >> (kGlyphW - 1 - col)) & 1) {
              fill_rect(x + col * scale, y + row * scale, x + (col + 1) * scale - 1,
                        y + (row + 1) * scale - 1, c);
            }
          }
        }
      }
      x += kGlyphAdvance * scale;
    }
  }
  static int text_width(const std::string& s, int scale) {
    return s.empty() ? 0 : (static_cast<int>(s.size()) * kGlyphAdvance - 1) * scale;
  }

  IndexedImage take() { return std::move(image_); }

 private:
  IndexedImage image_;
};

// Tick positions at 1, 2 or 5 times a power of ten, about `target` of them across [lo, hi].
struct Ticks {
  double first = 0, step = 1;
  int count = 0;
  int decimals = 0;
};

Ticks nice_ticks(double lo, double hi, int target, bool integers) {
  const double raw = (hi - lo) / std::max(target, 1);
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double norm = raw / magnitude;
  Ticks t;
  t.step = (norm < 1.5 ? 1 : norm < 3.5 ? 2 : norm < 7.5 ? 5 : 10) * magnitude;
  if (integers) t.step = std::max(1.0, std::round(t.step));
  t.first = std::ceil(lo / t.step - 1e-9) * t.step;
  t.count = static_cast<int>(std::floor((hi - t.first) / t.step + 1e-9)) + 1;
  t.decimals = std::max(0, static_cast<int>(-std::floor(std::log10(t.step) + 1e-9)));
  return t;
}

// ---- PNG -----------------------------------------------------------------------------------

// The CRC-32 of zlib and PNG (reflected polynomial 0xEDB88320), not TFRecord's CRC-32C.
uint32_t crc32_ieee(uint32_t crc, const uint8_t* data, size_t size) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t b = 0; b < 256; ++b) {
      uint32_t c = b;
      for (int bit = 0; bit < 8; ++bit) c = (c >> 1) ^ ((c & 1u) ? 0xEDB88320u : 0u);
      t[b] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = (crc >> 8) ^ table[(crc ^ data[i]) & 0xFF];
  return ~crc;
}

uint32_t adler32(const uint8_t* data, size_t size) {
  constexpr uint32_t kMod = 65521;
  // 5552 bytes is the most that can be summed before the 32-bit sums could overflow.
  uint32_t a = 1, b = 0;
  while (size > 0) {
    const size_t n = std::min<size_t>(size, 5552);
    for (size_t i = 0; i < n; ++i) {
      a += data[i];
      b += a;
    }
    a %= kMod;
    b %= kMod;
    data += n;
    size -= n;
  }
  return (b << 16) | a;
}

void put_be32(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>((v >> shift) & 0xFF));
}

void put_chunk(std::string& png, const char type[4], const std::string& data) {
  put_be32(png, static_cast<uint32_t>(data.size()));
  std::string typed(type, 4);
  typed += data;
  png += typed;
  put_be32(png, crc32_ieee(0, reinterpret_cast<const uint8_t*>(typed.data()), typed.size()));
}

// A zlib stream of stored (uncompressed) deflate blocks: at most 65535 bytes each, so a
// decoder needs no Huffman tables. Plots are small; size is not worth a compressor here.
std::string zlib_stored(const std::vector<uint8_t>& raw) {
  std::string z;
  z.push_back(static_cast<char>(0x78));  // deflate, 32 KiB window
  z.push_back(static_cast<char>(0x01));  // no preset dictionary; 0x7801 % 31 == 0
  constexpr size_t kMaxStored = 65535;
  size_t pos = 0;
  do {
    const size_t n = std::min(kMaxStored, raw.size() - pos);
    const bool final = pos + n == raw.size();
    z.push_back(static_cast<char>(final ? 1 : 0));  // BFINAL, BTYPE=00, padded to a byte
    z.push_back(static_cast<char>(n & 0xFF));
    z.push_back(static_cast<char>(n >> 8));
    z.push_back(static_cast<char>(~n & 0xFF));
    z.push_back(static_cast<char>((~n >> 8) & 0xFF));
    z.append(reinterpret_cast<const char*>(raw.data()) + pos, n);
    pos += n;
  } while (pos < raw.size());
  put_be32(z, adler32(raw.data(), raw.size()));
  return z;
}

}  // namespace

LossCurves read_loss_curves(const std::string& metrics_jsonl) {
  std::ifstream in(metrics_jsonl);
  TS_CHECK(in.good(), "cannot read {}: is the folder a training run's output.dir?", metrics_jsonl);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(std::move(line));
  LossCurves curves;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j = nlohmann::json::parse(lines[i], nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      if (i + 1 == lines.size()) break;  // the run is still writing this line
      TS_THROW(InvalidArgument, "{} line {} is not JSON", metrics_jsonl, i + 1);
    }
    TS_CHECK(j.is_object() && j.contains("step") && j["step"].is_number(),
             "{} line {} has no numeric \"step\"", metrics_jsonl, i + 1);
    const double step = j["step"].get<double>();
    if (j.contains("loss") && j["loss"].is_number()) {
      curves.train.emplace_back(step, j["loss"].get<double>());
    }
    if (j.contains("val_loss") && j["val_loss"].is_number()) {
      curves.val.emplace_back(step, j["val_loss"].get<double>());
    }
  }
  return curves;
}

IndexedImage render_loss_plot(const LossCurves& curves, int width, int height) {
  TS_CHECK(width >= 160 && height >= 120 && width <= 16384 && height <= 16384,
           "plot size {}x{} is out of range: use 160..16384 by 120..16384 pixels", width, height);
  TS_CHECK(!curves.train.empty() || !curves.val.empty(), "no loss values to plot");
  const int scale = width >= 480 && height >= 300 ? 2 : 1;
  const int char_h = kGlyphH * scale;

  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo;
  double y_lo = x_lo, y_hi = -x_lo;
  for (const auto* curve : {&curves.train, &curves.val}) {
    for (const auto& [step, loss] : *curve) {
      if (!std::isfinite(loss)) continue;
      x_lo = std::min(x_lo, step);
      x_hi = std::max(x_hi, step);
      y_lo = std::min(y_lo, loss);
      y_hi = std::max(y_hi, loss);
    }
  }
  TS_CHECK(std::isfinite(x_lo), "no finite loss values to plot");
  if (x_hi - x_lo < 1) x_hi = x_lo + 1;
  if (y_hi - y_lo < 1e-9) {
    y_lo -= 0.5;
    y_hi += 0.5;
  }
  const double pad = 0.05 * (y_hi - y_lo);
  y_lo -= pad;
  y_hi += pad;
  const Ticks x_ticks = nice_ticks(x_lo, x_hi, 6, /*integers=*/true);
  const Ticks y_ticks = nice_ticks(y_lo, y_hi, 6, /*integers=*/false);

  int label_w = 0;
  for (int i = 0; i < y_ticks.count; ++i) {
    const double v = y_ticks.first + i * y_ticks.step;
    label_w =
        std::max(label_w, Canvas::text_width(fmt::format("{:.{}f}", v, y_ticks.decimals), scale));
  }
  const int left = label_w + 6 * scale + 4, right = width - 10 * scale;
  const int top = char_h + 8 * scale, bottom = height - (2 * char_h + 10 * scale);
  const auto px = [&](double step) {
    return left + static_cast<int>(std::lround((step - x_lo) / (x_hi - x_lo) * (right - left)));
  };
  const auto py = [&](double loss) {
    return bottom - static_cast<int>(std::lround((loss - y_lo) / (y_hi - y_lo) * (bottom - top)));
  };

  Canvas c(width, height);
  for (int i = 0; i < y_ticks.count; ++i) {
    const double v = y_ticks.first + i * y_ticks.step;
    const int y = py(v);
    c.fill_rect(left + 1, y, right - 1, y, kGrid);
    c.fill_rect(left - 3 * scale, y, left - 1, y, kBlack);
    const std::string label = fmt::format("{:.{}f}", v, y_ticks.decimals);
    c.text(left - 5 * scale - Canvas::text_width(label, scale), y - char_h / 2, label, kBlack,
           scale);
  }
  for (int i = 0; i < x_ticks.count; ++i) {
    const double v = x_ticks.first + i * x_ticks.step;
    const int x = px(v);
    c.fill_rect(x, top + 1, x, bottom - 1, kGrid);
    c.fill_rect(x, bottom + 1, x, bottom + 3 * scale, kBlack);
    const std::string label = fmt::format("{:.0f}", v);
    c.text(x - Canvas::text_width(label, scale) / 2, bottom + 5 * scale, label, kBlack, scale);
  }
  c.rect(left, top, right, bottom, kBlack);
  c.text(right - Canvas::text_width("step", scale), height - char_h - 3 * scale, "step", kBlack,
         scale);
  c.text(4, 4 * scale, "loss", kBlack, scale);

  const auto polyline = [&](const std::vector<std::pair<double, double>>& pts, uint8_t colour,
                            int thickness) {
    bool have_prev = false;
    int prev_x = 0, prev_y = 0;
    for (const auto& [step, loss] : pts) {
      if (!std::isfinite(loss)) {
        have_prev = false;  // a gap, not a line to nowhere
        continue;
      }
      const int x = px(step), y = py(loss);
      if (have_prev) c.line(prev_x, prev_y, x, y, colour, thickness);
      prev_x = x;
      prev_y = y;
      have_prev = true;
    }
  };
  polyline(curves.train, kTrain, scale);
  polyline(curves.val, kVal, scale);
  // Validation is measured at a few steps: mark each one so a single point still shows.
  const int mark = 2 * scale;
  for (const auto& [step, loss] : curves.val) {
    if (std::isfinite(loss))
      c.fill_rect(px(step) - mark, py(loss) - mark, px(step) + mark, py(loss) + mark, kVal);
  }

  // Legend, top right inside the frame.
  std::vector<std::pair<std::string, uint8_t>> entries;
  if (!curves.train.empty()) entries.emplace_back("train loss", kTrain);
  if (!curves.val.empty()) entries.emplace_back("val loss", kVal);
  const int swatch = 14 * scale, row_h = char_h + 4 * scale;
  const int box_w = swatch + 6 * scale + Canvas::text_width("train loss", scale) + 8 * scale;
  const int box_h = static_cast<int>(entries.size()) * row_h + 4 * scale;
  const int bx1 = right - 6 * scale, bx0 = bx1 - box_w, by0 = top + 6 * scale, by1 = by0 + box_h;
  c.fill_rect(bx0, by0, bx1, by1, kWhite);
  c.rect(bx0, by0, bx1, by1, kFrame);
  for (size_t i = 0; i < entries.size(); ++i) {
    const int y = by0 + 4 * scale + static_cast<int>(i) * row_h;
    const int mid = y + char_h / 2;
    c.line(bx0 + 4 * scale, mid, bx0 + 4 * scale + swatch, mid, entries[i].second, scale);
    c.text(bx0 + 8 * scale + swatch, y, entries[i].first, kBlack, scale);
  }
  return c.take();
}

std::string encode_png(const IndexedImage& image) {
  TS_CHECK(image.width > 0 && image.height > 0 &&
               image.pixels.size() == static_cast<size_t>(image.width) * image.height,
           "encode_png: {}x{} image with {} pixels", image.width, image.height,
           image.pixels.size());
  TS_CHECK(!image.palette.empty() && image.palette.size() <= 256,
           "encode_png: a palette needs 1..256 colours, got {}", image.palette.size());
  std::string png = "\x89PNG\r\n\x1a\n";
  std::string ihdr;
  put_be32(ihdr, static_cast<uint32_t>(image.width));
  put_be32(ihdr, static_cast<uint32_t>(image.height));
  ihdr += std::string{8, 3, 0, 0, 0};  // 8 bits, palette, deflate, adaptive filters, no interlace
  put_chunk(png, "IHDR", ihdr);
  std::string plte;
  for (const auto& rgb : image.palette) plte.append(reinterpret_cast<const char*>(rgb.data()), 3);
  put_chunk(png, "PLTE", plte);
  // Each scanline starts with its filter type; 0 (None) keeps the encoder trivial.
  std::vector<uint8_t> raw;
  raw.reserve(static_cast<size_t>(image.width + 1) * image.height);
  for (int y = 0; y < image.height; ++y) {
    raw.push_back(0);
    const auto row = image.pixels.begin() + static_cast<ptrdiff_t>(y) * image.width;
    raw.insert(raw.end(), row, row + image.width);
  }
  put_chunk(png, "IDAT", zlib_stored(raw));
  put_chunk(png, "IEND", "");
  return png;
}

int run_plot(const std::string& run_dir, const std::string& out, int width, int height) {
  const std::string jsonl = (fs::path(run_dir) / "metrics.jsonl").string();
  TS_CHECK(fs::exists(jsonl), "no metrics.jsonl in {}: pass a training run's output.dir", run_dir);
  const LossCurves curves = read_loss_curves(jsonl);
  TS_CHECK(!curves.train.empty(), "{} has no loss values yet", jsonl);
  const std::string path = out.empty() ? (fs::path(run_dir) / "loss.png").string() : out;
  const std::string png = encode_png(render_loss_plot(curves, width, height));
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file.write(png.data(), static_cast<std::streamsize>(png.size()));
  file.close();
  TS_CHECK(file.good(), "cannot write {}", path);
  spdlog::info("wrote {} ({}x{}, {} train points, {} validation points)", path, width, height,
               curves.train.size(), curves.val.size());
  return 0;
}

}  // namespace tessera::engine
