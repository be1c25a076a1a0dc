// `tessera plot RUN_DIR`: the loss curves of a run (train loss per step, validation loss
// where it was measured) from its metrics.jsonl, drawn by a small rasteriser and saved as a
// PNG by a self-contained encoder (stored deflate blocks: no zlib, no image library).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace tessera::engine {

struct LossCurves {
  std::vector<std::pair<double, double>> train;  // (step, loss)
  std::vector<std::pair<double, double>> val;    // (step, val_loss)
};

// Reads metrics.jsonl as MetricsLogger writes it. A truncated last line (the run is still
// writing) is ignored; a malformed line elsewhere is an error naming it.
LossCurves read_loss_curves(const std::string& metrics_jsonl);

// An 8-bit palette image: pixels are indices into `palette` (RGB triples), row by row.
struct IndexedImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;
  std::vector<std::array<uint8_t, 3>> palette;
};

IndexedImage render_loss_plot(const LossCurves& curves, int width, int height);
// A valid PNG (colour type 3) of the image, bytes ready for a file.
std::string encode_png(const IndexedImage& image);

inline constexpr int kDefaultPlotWidth = 800;
inline constexpr int kDefaultPlotHeight = 500;

// Writes the plot of run_dir/metrics.jsonl to `out` ("" = run_dir/loss.png); returns the
// process exit code (0), throwing on errors like the other subcommands.
int run_plot(const std::string& run_dir, const std::string& out, int width = kDefaultPlotWidth,
             int height = kDefaultPlotHeight);

}  // namespace tessera::engine
