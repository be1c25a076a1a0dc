// Saving training checkpoints from every rank at once: the collective protocol around
// checkpoint_io.h (stage the folder, every rank writes its shard, agree that all did,
// commit), the background writer of checkpoint.async_save, and the stop request that
// SIGTERM / SIGINT turn into (the trainer finishes its step, saves and ends cleanly).
#pragma once

#include <atomic>
#include <exception>
#include <functional>
#include <string>
#include <thread>

#include "parallel/comm/process_group.h"
#include "runtime/engine/checkpoint_io.h"
#include "runtime/engine/config.h"

namespace tessera::engine {

class Checkpointer {
 public:
  // world: every rank of the run (null: one rank). Collective only in its methods.
  Checkpointer(CheckpointConfig config, parallel::ProcessGroup* world);
  // Waits for a write in flight and leaves it uncommitted: "latest" still names the previous
  // checkpoint, and the next commit removes the staging folder.
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  // Collective. Commits the save in flight, then saves this rank's `image` as step
  // header.progress.step (rank 0's header becomes the manifest): written and committed
  // before it returns, or with async_save written by a background thread and committed by a
  // later poll() or flush(). Throws Error on every rank, with the failing rank's reason,
  // when any rank's write fails; the staging folder is then removed and earlier checkpoints
  // are untouched.
  void save(Manifest header, ShardImage image);
  // Collective, once per step: commits an async save once every rank has written its shard.
  // Returns whether any rank has been asked to stop (StopSignals).
  bool poll();
  // Collective: waits for the save in flight, if any, and commits it.
  void flush();
  // The step folder of the last committed save ("" before one).
  const std::string& last_saved() const { return last_saved_; }
  const CheckpointConfig& config() const { return config_; }
  // The last save: how long save() held the step (sync: image, write and commit; async: the
  // image copy), and how long its shard took to write (CRC, write, fsync) on this rank.
  double last_stall_seconds() const { return stall_seconds_; }
  double last_write_seconds() const { return write_seconds_; }
  // True while an async save has not yet been committed.
  bool pending() const { return pending_; }
  // With async_save, the last committed image's host buffer, for the next image (the copy
  // then runs at memory speed, without first touching 12 bytes per parameter of fresh pages);
  // empty otherwise.
  Storage take_spare_buffer() { return std::move(spare_); }

 private:
  void commit();  // collective: the write in flight has finished on this rank
  bool rank0() const { return world_ == nullptr || world_->rank() == 0; }
  void agreed(const std::function<void()>& fn);  // run_agreed over the world (or fn alone)

  CheckpointConfig config_;
  parallel::ProcessGroup* world_;
  bool pending_ = false;
  std::thread writer_;
  std::atomic<bool> written_{false};
  std::exception_ptr write_error_;
  double write_seconds_ = 0.0;
  double stall_seconds_ = 0.0;  // the save() call itself
  Manifest header_;
  ShardImage image_;
  Storage spare_;
  std::string staging_;
  std::string last_saved_;
};

// While one is alive, SIGTERM and SIGINT do not end the process: they set a flag that
// Checkpointer::poll reports, so the trainer ends after its step with a checkpoint. A
// second signal of the same kind ends the process as usual. Nests (thread ranks each hold
// one); the flag is cleared when the last one goes.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  static bool requested();
  // The signal that asked (SIGTERM, SIGINT), 0 if none.
  static int signal_number();
};

}  // namespace tessera::engine
