#include "runtime/engine/metrics.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/core/error.h"
#include "runtime/core/settings.h"
#include "runtime/kernels/cpu_convert.h"
#include "runtime/engine/tensorboard.h"

namespace tessera::engine {
namespace {

namespace fs = std::filesystem;

TS_SETTING("TESSERA_PEAK_GFLOPS", "auto",
           "one rank's peak fp32 GFLOP/s, the denominator of MFU; auto = 115 x the rank's "
           "threads (the AVX-512 FMA peak of one Zen 4 core)");

constexpr int kBarWidth = 24;
// Redrawing faster than this only costs terminal bandwidth on tiny models.
constexpr double kMinRedrawSeconds = 0.1;

double monotonic_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(std::llround(seconds));
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

std::string category_key(int c) {
  return std::string(mem_category_name(static_cast<MemCategory>(c)));
}

}  // namespace

double model_flops_utilization(double tokens_per_s, double flops_per_token, int world,
                               double peak_gflops_per_rank) {
  TS_CHECK(world > 0 && peak_gflops_per_rank > 0,
           "MFU needs a positive world size and peak (got world {}, peak {} GFLOP/s)", world,
           peak_gflops_per_rank);
  return tokens_per_s * flops_per_token / (world * peak_gflops_per_rank * 1e9);
}

double peak_gflops_per_rank(int threads, DType precision) {
  const std::string v = setting_value("TESSERA_PEAK_GFLOPS");
  if (v.empty() || v == "auto") {
    const bool bf16_units = precision == DType::BF16 &&
                            kernels::cpu::best_convert_path() == kernels::cpu::ConvertPath::Avx512Bf16;
    return kPeakGflopsPerThread * std::max(threads, 1) * (bf16_units ? 2 : 1);
  }
  char* end = nullptr;
  const double peak = std::strtod(v.c_str(), &end);
  TS_CHECK(end != nullptr && *end == '\0' && std::isfinite(peak) && peak > 0,
           "TESSERA_PEAK_GFLOPS='{}' is not a positive number of GFLOP/s (or 'auto')", v);
  return peak;
}

MetricsLogger::MetricsLogger(MetricsOptions options) : options_(std::move(options)) {
  if (!writes()) return;
  TS_CHECK(options_.steps_per_print > 0, "steps_per_print must be positive, got {}",
           options_.steps_per_print);
  std::error_code ec;
  fs::create_directories(options_.run_dir, ec);
  TS_CHECK(!ec, "cannot create the run folder {}: {} (check output.dir)", options_.run_dir,
           ec.message());
  std::string kept;  // a resumed run's records up to its checkpoint
  if (options_.resume_after_step > 0) {
    std::ifstream old(jsonl_path());
    for (std::string line; std::getline(old, line);) {
      const auto record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (record.is_object() && record.contains("step") && record["step"].is_number_integer() &&
          record["step"].get<int64_t>() <= options_.resume_after_step) {
        kept += line + "\n";
      }
    }
  }
  if (options_.resume_after_step > 0) {
    // Replaced through a renamed temporary file, so a kill now loses no earlier record.
    const std::string tmp = jsonl_path() + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << kept;
      TS_CHECK(out.good(), "cannot write {}: check output.dir", tmp);
    }
    fs::rename(tmp, jsonl_path());
  }
  jsonl_.open(jsonl_path(), options_.resume_after_step > 0 ? std::ios::app : std::ios::trunc);
  TS_CHECK(jsonl_.good(), "cannot write {}: check output.dir", jsonl_path());
  if (options_.tensorboard) events_ = std::make_unique<EventWriter>(options_.run_dir);
  switch (options_.console) {
    case ConsoleMode::Auto:
      // A terminal gets the bar; TESSERA_LOG_LEVEL=warn or quieter asks for silence.
      progress_bar_ = options_.console_stream != nullptr &&
                      ::isatty(::fileno(options_.console_stream)) &&
                      spdlog::should_log(spdlog::level::info);
      break;
    case ConsoleMode::Progress:
      progress_bar_ = options_.console_stream != nullptr;
      break;
    case ConsoleMode::Plain:
    case ConsoleMode::Off:
      progress_bar_ = false;
      break;
  }
}

MetricsLogger::~MetricsLogger() { finish(); }

std::string MetricsLogger::jsonl_path() const {
  return (fs::path(options_.run_dir) / "metrics.jsonl").string();
}

std::string MetricsLogger::event_file_path() const {
  return events_ != nullptr ? events_->path() : std::string();
}

void MetricsLogger::log_step(const StepMetrics& m) {
  if (!writes()) return;
  const double now = monotonic_seconds();
  if (start_s_ < 0) {
    // Count the first step's own time, so the first ETA is already an estimate.
    start_s_ = now - m.ms / 1000.0;
    start_step_ = m.step - 1;
  }

  nlohmann::json line = {{"step", m.step},
                         {"loss", m.loss},
                         {"lr", m.lr},
                         {"grad_norm", m.grad_norm},
                         {"tokens_per_s", m.tokens_per_s},
                         {"ms", m.ms},
                         {"gflops", m.gflops},
                         {"mfu", m.mfu},
                         {"wall_time", unix_time_now()}};
  for (int c = 0; c < kNumMemCategories; ++c) {
    line["mem_" + category_key(c)] = m.memory.current[c];
    line["mem_peak_" + category_key(c)] = m.memory.peak[c];
  }
  line["mem_total"] = m.memory.total_current;
  line["mem_peak_total"] = m.memory.total_peak;
  if (m.loss_scale) line["loss_scale"] = *m.loss_scale;
  if (m.skipped_steps) line["skipped_steps"] = *m.skipped_steps;
  if (m.overflow_count) line["overflow_count"] = *m.overflow_count;
  if (m.val_loss) line["val_loss"] = *m.val_loss;
  jsonl_ << line.dump() << '\n';
  jsonl_.flush();
  TS_CHECK(jsonl_.good(), "writing {} failed (disk full?)", jsonl_path());

  if (events_ != nullptr) {
    std::vector<std::pair<std::string, float>> scalars = {
        {"train/loss", static_cast<float>(m.loss)},
        {"train/lr", static_cast<float>(m.lr)},
        {"train/grad_norm", static_cast<float>(m.grad_norm)},
        {"perf/tokens_per_s", static_cast<float>(m.tokens_per_s)},
        {"perf/step_ms", static_cast<float>(m.ms)},
        {"perf/gflops", static_cast<float>(m.gflops)},
        {"perf/mfu", static_cast<float>(m.mfu)}};
    for (int c = 0; c < kNumMemCategories; ++c) {
      scalars.emplace_back("memory/" + category_key(c) + "_bytes",
                           static_cast<float>(m.memory.current[c]));
    }
    scalars.emplace_back("memory/total_bytes", static_cast<float>(m.memory.total_current));
    scalars.emplace_back("memory/total_peak_bytes", static_cast<float>(m.memory.total_peak));
    if (m.loss_scale) scalars.emplace_back("train/loss_scale", static_cast<float>(*m.loss_scale));
    if (m.skipped_steps) {
      scalars.emplace_back("train/skipped_steps", static_cast<float>(*m.skipped_steps));
    }
    if (m.overflow_count) {
      scalars.emplace_back("train/overflow_count", static_cast<float>(*m.overflow_count));
    }
    if (m.val_loss) scalars.emplace_back("val/loss", static_cast<float>(*m.val_loss));
    events_->add_scalars(m.step, scalars);
    events_->flush();
  }

  if (options_.console == ConsoleMode::Off) return;
  const bool print = should_print(m);
  if (print) {
    clear_progress();
    spdlog::info("{}", format_line(m));
  }
  if (progress_bar_) {
    const bool last = m.step >= options_.total_steps;
    if (print || last || now - last_draw_s_ >= kMinRedrawSeconds) {
      draw_progress(m);
      last_draw_s_ = now;
    }
    if (last) finish();
  }
}

void MetricsLogger::finish() {
  if (bar_visible_ && options_.console_stream != nullptr) {
    std::fputc('\n', options_.console_stream);
    std::fflush(options_.console_stream);
  }
  bar_visible_ = false;
}

bool MetricsLogger::should_print(const StepMetrics& m) const {
  return m.step == 1 || m.step % options_.steps_per_print == 0 || m.step >= options_.total_steps ||
         m.val_loss.has_value();
}

std::string MetricsLogger::format_line(const StepMetrics& m) const {
  std::string line =
      fmt::format("step {:>{}}/{} | loss {:.4f}", m.step,
                  fmt::formatted_size("{}", options_.total_steps), options_.total_steps, m.loss);
  if (m.val_loss) line += fmt::format(" | val {:.4f}", *m.val_loss);
  line += fmt::format(
      " | lr {:.2e} | norm {:.4f} | {:.1f} ms | {:.0f} tok/s | {:.1f} GFLOP/s | MFU {:.1f}%", m.lr,
      m.grad_norm, m.ms, m.tokens_per_s, m.gflops, 100.0 * m.mfu);
  if (m.loss_scale) line += fmt::format(" | scale {:g}", *m.loss_scale);
  if (m.skipped_steps) line += fmt::format(" | skipped {}", *m.skipped_steps);
  line += fmt::format(" | mem {}", format_bytes(m.memory.total_current));
  return line;
}

std::string MetricsLogger::format_progress(const StepMetrics& m, double eta_s) const {
  const double fraction =
      options_.total_steps > 0
          ? std::clamp(static_cast<double>(m.step) / options_.total_steps, 0.0, 1.0)
          : 0.0;
  const int filled = static_cast<int>(fraction * kBarWidth);
  std::string bar(kBarWidth, ' ');
  std::fill_n(bar.begin(), filled, '=');
  if (filled < kBarWidth && filled > 0) bar[filled] = '>';
  return fmt::format("[{}] {}/{} | loss {:.4f} | {:.0f} tok/s | ETA {}", bar, m.step,
                     options_.total_steps, m.loss, m.tokens_per_s, format_duration(eta_s));
}

void MetricsLogger::draw_progress(const StepMetrics& m) {
  const double elapsed = monotonic_seconds() - start_s_;
  const int64_t done = m.step - start_step_;
  const double eta = done > 0 ? elapsed / static_cast<double>(done) *
                                    std::max<int64_t>(options_.total_steps - m.step, 0)
                              : NAN;
  // \r returns to the line's start and ESC[K erases what a longer previous bar left behind.
  const std::string text = fmt::format("\r{}\x1b[K", format_progress(m, eta));
  std::fputs(text.c_str(), options_.console_stream);
  std::fflush(options_.console_stream);
  bar_visible_ = true;
}

void MetricsLogger::clear_progress() {
  if (!bar_visible_) return;
  // Erase the bar so the log line takes its place; the bar is redrawn below the line.
  std::fputs("\r\x1b[K", options_.console_stream);
  std::fflush(options_.console_stream);
  bar_visible_ = false;
}

}  // namespace tessera::engine
