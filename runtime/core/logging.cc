#include "runtime/core/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <atomic>
#include <string>

#include "runtime/core/error.h"
#include "runtime/core/settings.h"

namespace tessera {
namespace {
TS_SETTING("TESSERA_LOG_LEVEL", "info", "log level: trace, debug, info, warn, error, off");
std::atomic<int> g_rank{0};
thread_local int t_rank = -1;
}  // namespace

int log_rank() { return t_rank >= 0 ? t_rank : g_rank.load(); }
void set_thread_rank(int rank) { t_rank = rank; }

void init_logging(int rank, int world) {
  g_rank = rank;
  const std::string level = setting_value("TESSERA_LOG_LEVEL");
  const auto parsed = spdlog::level::from_str(level);
  TS_CHECK(parsed != spdlog::level::off || level == "off",
           "TESSERA_LOG_LEVEL='{}' is not a level: use trace, debug, info, warn, error or off",
           level);
  // Log to stderr so stdout stays clean for generated text and machine-readable output.
  static const auto logger = [] {
    auto l = spdlog::stderr_color_mt("tessera");
    spdlog::set_default_logger(l);
    return l;
  }();
  spdlog::set_level(parsed);
  if (world > 1) {
    spdlog::set_pattern("[%H:%M:%S] [rank " + std::to_string(rank) + "] %^%l%$: %v");
  } else {
    spdlog::set_pattern("[%H:%M:%S] %^%l%$: %v");
  }
}

}  // namespace tessera
