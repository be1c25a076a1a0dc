// Writes the TensorBoard event files tensorboard_check.py reads with TensorBoard's own
// reader (usage: interop_write_events WORK_DIR):
//   WORK_DIR/logger: what MetricsLogger writes for a 30-step run (metrics.jsonl beside it
//                    holds the expected values), validation every 10 steps;
//   WORK_DIR/known:  EventWriter scalars with values the script recomputes.
#include <cmath>
#include <iostream>
#include <string>

#include "runtime/engine/metrics.h"
#include "runtime/engine/tensorboard.h"

int main(int argc, char** argv) {
  using namespace tessera::engine;
  if (argc != 2) {
    std::cerr << "usage: interop_write_events WORK_DIR\n";
    return 2;
  }
  const std::string work = argv[1];
  try {
    MetricsOptions options;
    options.run_dir = work + "/logger";
    options.total_steps = 30;
    options.console = ConsoleMode::Off;
    MetricsLogger logger(options);
    for (int64_t step = 1; step <= options.total_steps; ++step) {
      StepMetrics m;
      m.step = step;
      m.loss = 5.0 * std::exp(-0.1 * static_cast<double>(step)) + 1.0;
      m.lr = 1e-3 * std::min(1.0, static_cast<double>(step) / 10.0);
      m.grad_norm = 1.0 / std::sqrt(static_cast<double>(step));
      m.tokens_per_s = 4096.0 + static_cast<double>(step);
      m.ms = 250.0 - static_cast<double>(step);
      m.gflops = 0.5 * static_cast<double>(step);
      m.mfu = 0.001 * static_cast<double>(step);
      m.memory.current[0] = 1'000'000 * step;  // params: exact in a float up to 2^24 * 2^k
      m.memory.total_current = 2'000'000 * step;
      m.loss_scale = 65536.0;
      if (step % 10 == 0) m.val_loss = m.loss + 0.25;
      logger.log_step(m);
    }

    EventWriter known(work + "/known");
    for (int64_t step = 0; step < 20; ++step) {
      known.add_scalar("check/linear", step, 0.25f * static_cast<float>(step) - 1.0f,
                       1.7e9 + static_cast<double>(step));
    }
    known.add_scalars(7, {{"check/a", 1.5f}, {"check/b", -2.5f}}, 1.7e9 + 100.0);
    known.flush();
    std::cout << logger.event_file_path() << "\n" << known.path() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
