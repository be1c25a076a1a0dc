#include "runtime/engine/checkpointer.h"

#include <csignal>
#include <chrono>
#include <filesystem>
#include <mutex>

#include "parallel/comm/agree.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"

namespace tessera::engine {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Checkpointer::Checkpointer(CheckpointConfig config, parallel::ProcessGroup* world)
    : config_(std::move(config)), world_(world != nullptr && world->size() > 1 ? world : nullptr) {
  TS_CHECK(!config_.dir.empty(), "checkpoint.dir is empty: name a folder for checkpoints");
}

Checkpointer::~Checkpointer() {
  if (writer_.joinable()) writer_.join();
}

void Checkpointer::agreed(const std::function<void()>& fn) {
  if (world_ == nullptr) {
    fn();
  } else {
    parallel::run_agreed(*world_, fn);
  }
}

void Checkpointer::save(Manifest header, ShardImage image) {
  const auto start = std::chrono::steady_clock::now();
  flush();
  const int64_t step = header.progress.step;
  // Rank 0 makes the staging folder before any rank writes into it.
  agreed([&] {
    if (rank0()) prepare_staging(config_.dir, step);
  });
  staging_ = (std::filesystem::path(config_.dir) / (checkpoint_folder_name(step) + ".tmp")).string();
  header_ = std::move(header);
  image_ = std::move(image);
  pending_ = true;
  written_ = false;
  write_error_ = nullptr;
  auto write = [this] {
    const auto began = std::chrono::steady_clock::now();
    try {
      write_shard(staging_, image_);
    } catch (...) {
      write_error_ = std::current_exception();
    }
    write_seconds_ = seconds_since(began);
    written_ = true;
  };
  if (config_.async_save) {
    writer_ = std::thread(write);
    stall_seconds_ = seconds_since(start);
    return;
  }
  write();
  commit();
  stall_seconds_ = seconds_since(start);
}

bool Checkpointer::poll() {
  // One small all-reduce a step: [stop asked, a save still being written] over every rank.
  float flags[2] = {StopSignals::requested() ? 1.0f : 0.0f, pending_ && !written_ ? 1.0f : 0.0f};
  if (world_ != nullptr) {
    parallel::AllreduceOptions opts;
    opts.op = parallel::ReduceOp::Max;
    world_->all_reduce(flags, 2, DType::F32, opts)->wait();
  }
  if (pending_ && flags[1] == 0.0f) commit();
  return flags[0] > 0.0f;
}

void Checkpointer::flush() {
  if (pending_) commit();
}

void Checkpointer::commit() {
  if (writer_.joinable()) writer_.join();
  pending_ = false;
  const int64_t step = header_.progress.step;
  try {
    agreed([&] {
      if (write_error_) std::rethrow_exception(write_error_);
    });
    agreed([&] {
      if (rank0()) last_saved_ = commit_checkpoint(config_.dir, step, header_, config_.keep_last);
    });
  } catch (const std::exception& e) {
    if (rank0()) abandon_staging(config_.dir, step);
    image_ = ShardImage();
    TS_THROW(Error, "checkpoint of step {} failed, earlier checkpoints are intact: {}", step,
             e.what());
  }
  if (!rank0()) last_saved_ = (std::filesystem::path(config_.dir) / checkpoint_folder_name(step)).string();
  log_rank0("checkpoint: saved {} ({:.1f} MiB on this rank; written in {:.2f} s, the step "
            "waited {:.2f} s{})",
            last_saved_, static_cast<double>(image_.size()) / (1 << 20), write_seconds_,
            stall_seconds_, config_.async_save ? ", async" : "");
  if (config_.async_save) spare_ = image_.release_buffer();
  image_ = ShardImage();
}

// --- StopSignals -----------------------------------------------------------------------

namespace {

std::atomic<int> g_stop_signal{0};
std::mutex g_stop_mutex;
int g_stop_holders = 0;
struct sigaction g_old_term, g_old_int;

extern "C" void on_stop_signal(int sig) {
  // The first signal asks for a clean stop; SA_RESETHAND makes the next one act as usual.
  g_stop_signal.store(sig);
}

}  // namespace

StopSignals::StopSignals() {
  std::lock_guard<std::mutex> lock(g_stop_mutex);
  if (g_stop_holders++ > 0) return;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND | SA_RESTART;
  sigaction(SIGTERM, &sa, &g_old_term);
  sigaction(SIGINT, &sa, &g_old_int);
}

StopSignals::~StopSignals() {
  std::lock_guard<std::mutex> lock(g_stop_mutex);
  if (--g_stop_holders > 0) return;
  sigaction(SIGTERM, &g_old_term, nullptr);
  sigaction(SIGINT, &g_old_int, nullptr);
  g_stop_signal.store(0);
}

bool StopSignals::requested() { return g_stop_signal.load() != 0; }
int StopSignals::signal_number() { return g_stop_signal.load(); }

}  // namespace tessera::engine
