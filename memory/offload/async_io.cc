// SwapFile: one unlinked, preallocated file per user, moved in chunks of block_size through
// io_uring (one thread per file submits and reaps, so transfers keep moving while the caller
// computes) or through a pread/pwrite thread pool. Both keep at most queue_depth chunks in
// flight; the first failure sticks and, before it is
// thrown, every chunk still moving is finished, so no buffer is written after its owner hears.
#include "memory/offload/async_io.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#if TESSERA_HAVE_LIBURING
#include <liburing.h>
#endif

#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/core/memory_stats.h"
#include "runtime/core/settings.h"

namespace tessera::memory::offload {

TS_SETTING("TESSERA_OFFLOAD_FAIL_AFTER", "0",
           "Fault injection for tests: the n-th offload swap-file request of the process (over "
           "every swap file, 1-based) fails with EIO; 0: never.");

namespace {

// Storage aligns buffers of at least this many bytes to it (runtime/core/storage.cc).
constexpr int64_t kStorageHugePage = int64_t{2} << 20;
// One request's length goes to the kernel as an unsigned int and comes back as an int.
constexpr int64_t kMaxBlock = int64_t{1} << 30;

// Process-wide: several swap files (thread ranks) run at once.
std::atomic<int64_t> g_fail_after{-1};  // -1: not read from the setting yet
std::atomic<int64_t> g_requests{0};
std::once_flag g_fail_setting;
std::atomic<bool> g_logged_no_uring{false}, g_logged_no_direct{false};
std::atomic<uint64_t> g_file_counter{0};

void read_fail_setting() {
  std::call_once(g_fail_setting, [] {
    int64_t expected = -1;
    g_fail_after.compare_exchange_strong(expected, setting_int("TESSERA_OFFLOAD_FAIL_AFTER"));
  });
}

// Whether this request is the one fault injection fails.
bool injected_failure() {
  read_fail_setting();
  const int64_t after = g_fail_after.load();
  return after > 0 && g_requests.fetch_add(1) + 1 == after;
}

void log_once(std::atomic<bool>& flag, const std::string& message) {
  if (!flag.exchange(true)) spdlog::warn("{}", message);
}

std::string errno_text(int err) { return std::strerror(err); }

// One aligned page for the O_DIRECT probe, outside the memory tracker (it lives for a moment
// and is no one's state).
struct ProbePage {
  ProbePage() : data(std::aligned_alloc(kIoAlign, kIoAlign)) {
    if (data == nullptr) TS_THROW(Error, "out of host memory for a {}-byte page", kIoAlign);
    std::memset(data, 0, kIoAlign);
  }
  ~ProbePage() { std::free(data); }
  ProbePage(const ProbePage&) = delete;
  ProbePage& operator=(const ProbePage&) = delete;
  void* data;
};

// 0 when a whole aligned page moved, else the errno (EIO for a short transfer).
int probe_transfer(int fd, void* page, bool write) {
  for (;;) {
    const ssize_t n = write ? ::pwrite(fd, page, kIoAlign, 0) : ::pread(fd, page, kIoAlign, 0);
    if (n == kIoAlign) return 0;
    if (n >= 0) return EIO;
    if (errno != EINTR && errno != EAGAIN) return errno;
  }
}

}  // namespace

const char* io_backend_name(IoBackend backend) {
  return backend == IoBackend::IoUring ? "io_uring" : "thread pool";
}

int64_t io_storage_bytes(int64_t bytes) {
  return std::max(round_up_io(std::max<int64_t>(bytes, 1)), kStorageHugePage);
}

Storage io_storage(int64_t bytes, MemCategory category, bool zero) {
  Storage s(static_cast<size_t>(io_storage_bytes(bytes)), category, Device::cpu(), zero);
  TS_CHECK_EQ(reinterpret_cast<uintptr_t>(s.data()) % kIoAlign, uintptr_t{0},
              "io_storage: Storage did not align a 2 MiB+ buffer to a page");
  return s;
}

void inject_io_error_after(int64_t n) {
  read_fail_setting();
  g_requests = 0;
  g_fail_after = n;
}

// One transfer is cut into chunks of at most block_size bytes; the ticket completes when its
// last chunk does.
struct Chunk {
  IoTicket ticket = 0;
  bool write = false;
  int64_t offset = 0;
  char* buf = nullptr;
  int64_t bytes = 0;
};

struct SwapFile::Impl {
  std::string path;
  int64_t bytes = 0;
  int fd = -1;
  bool direct = false;
  IoBackend backend = IoBackend::ThreadPool;
  AioOptions options;

  std::mutex mu;  // guards everything below (the thread pool's workers share it)
  std::condition_variable changed;
  IoTicket next_ticket = 1;
  std::unordered_map<IoTicket, int64_t> remaining;  // chunks not yet complete, per ticket
  std::deque<Chunk> queue;                          // not yet submitted
  int in_flight = 0;  // submitted (io_uring) or being transferred (thread pool)
  std::string error;  // the first failure; sticky
  int64_t done_read = 0, done_written = 0;
  bool stopping = false;
  std::vector<std::thread> workers;  // the thread pool's, or io_uring's one driver
#if TESSERA_HAVE_LIBURING
  io_uring ring{};
  bool ring_ready = false;
#endif

  std::string describe(const Chunk& c, int err) const {
    return fmt::format("offload swap file {}: {} of {} bytes at offset {} failed: {}", path,
                       c.write ? "write" : "read", c.bytes, c.offset, errno_text(err));
  }
  void fail(const std::string& message) {
    if (error.empty()) error = message;
  }
  // Under mu. A chunk is finished: done (err 0), failed (err), or dropped because the file
  // failed before it was started (cancelled: neither counted nor an error of its own).
  void finish(const Chunk& c, int err, bool cancelled = false) {
    if (err != 0) fail(describe(c, err));
    if (err == 0 && !cancelled) (c.write ? done_written : done_read) += c.bytes;
    auto it = remaining.find(c.ticket);
    if (it != remaining.end()) --it->second;
  }
  // Blocking transfer of one chunk, continuing short transfers (the thread pool's workers).
  int transfer(Chunk c) const {
    while (c.bytes > 0) {
      const ssize_t n = c.write ? ::pwrite(fd, c.buf, static_cast<size_t>(c.bytes), c.offset)
                                : ::pread(fd, c.buf, static_cast<size_t>(c.bytes), c.offset);
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return errno;
      }
      if (n == 0) return c.write ? ENOSPC : EIO;  // a read past the end: the file shrank
      c.bytes -= n;
      c.offset += n;
      c.buf += n;
    }
    return 0;
  }

  void worker() {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      changed.wait(lock, [&] {
        return (stopping && queue.empty()) || (!queue.empty() && in_flight < options.queue_depth);
      });
      if (queue.empty()) return;  // stopping, nothing left
      const Chunk c = queue.front();
      queue.pop_front();
      if (!error.empty()) {  // the file already failed: do not touch it further
        finish(c, 0, /*cancelled=*/true);
        changed.notify_all();
        continue;
      }
      ++in_flight;
      int err = 0;
      if (injected_failure()) {
        err = EIO;
      } else {
        lock.unlock();
        err = transfer(c);
        lock.lock();
      }
      --in_flight;
      finish(c, err);
      changed.notify_all();
    }
  }

#if TESSERA_HAVE_LIBURING
  // Under mu, on the driver thread (the ring's only user). Hands every prepared request to the
  // kernel. A ring that cannot submit fails the file: what never went in never completes, so
  // it is taken out of in_flight (nothing waits for it).
  void submit_prepared() {
    int stalls = 0;
    while (io_uring_sq_ready(&ring) > 0) {
      const int rc = io_uring_submit(&ring);
      if (rc > 0) {
        stalls = 0;
        continue;
      }
      if ((rc == 0 || rc == -EINTR || rc == -EAGAIN || rc == -EBUSY) && ++stalls < 1000) {
        sched_yield();
        continue;
      }
      fail(fmt::format("offload swap file {}: io_uring_submit failed: {}", path,
                       errno_text(rc < 0 ? -rc : EAGAIN)));
      in_flight -= static_cast<int>(io_uring_sq_ready(&ring));
      return;
    }
  }
  // Under mu, on the driver thread. Starts queued chunks while the queue depth allows.
  void pump() {
    int prepared = 0;
    while (!queue.empty() && in_flight < options.queue_depth) {
      const Chunk next = queue.front();
      queue.pop_front();
      if (!error.empty()) {  // failed already: complete without touching the file
        finish(next, 0, /*cancelled=*/true);
        continue;
      }
      if (injected_failure()) {
        finish(next, EIO);
        continue;
      }
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      if (sqe == nullptr) {  // not expected: the ring has queue_depth entries
        queue.push_front(next);
        break;
      }
      Chunk* c = new Chunk(next);
      if (c->write) {
        io_uring_prep_write(sqe, fd, c->buf, static_cast<unsigned>(c->bytes),
                            static_cast<__u64>(c->offset));
      } else {
        io_uring_prep_read(sqe, fd, c->buf, static_cast<unsigned>(c->bytes),
                           static_cast<__u64>(c->offset));
      }
      io_uring_sqe_set_data(sqe, c);
      ++in_flight;
      ++prepared;
      if (options.single_submit) submit_prepared();
    }
    if (prepared > 0 && !options.single_submit) submit_prepared();
  }
  // One completion, from io_uring_wait_cqe or io_uring_peek_cqe.
  void complete(io_uring_cqe* cqe) {
    Chunk* c = static_cast<Chunk*>(io_uring_cqe_get_data(cqe));
    const int res = cqe->res;
    io_uring_cqe_seen(&ring, cqe);
    --in_flight;
    if (res == -EINTR || res == -EAGAIN) {
      queue.push_front(*c);  // again, as it was
    } else if (res < 0) {
      finish(*c, -res);
    } else if (res == 0) {
      finish(*c, c->write ? ENOSPC : EIO);  // a read past the end: the file shrank
    } else if (res < c->bytes) {
      // A short transfer: the rest goes again, first.
      (c->write ? done_written : done_read) += res;
      Chunk rest = *c;
      rest.offset += res;
      rest.buf += res;
      rest.bytes -= res;
      queue.push_front(rest);
    } else {
      finish(*c, 0);
    }
    delete c;
  }
  // Blocks (without mu) for one completion, then takes every other that is ready.
  void reap(std::unique_lock<std::mutex>& lock) {
    io_uring_cqe* cqe = nullptr;
    int rc;
    lock.unlock();
    do {
      rc = io_uring_wait_cqe(&ring, &cqe);
    } while (rc == -EINTR || rc == -EAGAIN);
    lock.lock();
    if (rc < 0) {
      fail(
          fmt::format("offload swap file {}: io_uring_wait_cqe failed: {}", path, errno_text(-rc)));
      in_flight = 0;  // nothing more can be reaped
      return;
    }
    complete(cqe);
    while (in_flight > 0 && io_uring_peek_cqe(&ring, &cqe) == 0) complete(cqe);
  }
  // io_uring's driver: submits what the callers queue and reaps what completes, so a transfer
  // moves on while its caller computes (a caller that submitted and reaped itself would leave
  // all but queue_depth chunks waiting until it next waited).
  void drive() {
    std::unique_lock<std::mutex> lock(mu);
    // overlap_events off: a batch is submitted only once the last one has completed.
    const auto may_pump = [&] { return options.overlap_events || in_flight == 0; };
    for (;;) {
      changed.wait(lock, [&] {
        return stopping || in_flight > 0 || (!queue.empty() && may_pump());
      });
      if (stopping && queue.empty() && in_flight == 0) return;
      if (may_pump()) pump();
      if (in_flight > 0) reap(lock);
      changed.notify_all();
    }
  }
#endif

  IoTicket submit(bool write, int64_t offset, void* buf, int64_t n) {
    TS_CHECK(offset % kIoAlign == 0 && n % kIoAlign == 0 &&
                 reinterpret_cast<uintptr_t>(buf) % kIoAlign == 0 && n >= 0,
             "offload swap file {}: {} of {} bytes at offset {} from {}: offsets, sizes and "
             "buffers must be multiples of {} (allocate buffers with io_storage)",
             path, write ? "write" : "read", n, offset, buf, kIoAlign);
    TS_CHECK(offset >= 0 && offset + n <= bytes,
             "offload swap file {}: {} of [{}, {}) is past its {} bytes", path,
             write ? "write" : "read", offset, offset + n, bytes);
    std::unique_lock<std::mutex> lock(mu);
    if (!error.empty()) throw IoError(error);
    const IoTicket t = next_ticket++;
    int64_t chunks = 0;
    for (int64_t at = 0; at < n; at += options.block_size) {
      queue.push_back({t, write, offset + at, static_cast<char*>(buf) + at,
                       std::min(options.block_size, n - at)});
      ++chunks;
    }
    remaining[t] = chunks;
    changed.notify_all();
    return t;
  }

  // Under lock: waits until the ticket (0: everything) is complete, or the file has failed
  // and nothing of it is moving any more.
  void wait_for(std::unique_lock<std::mutex>& lock, IoTicket t) {
    const auto complete_ = [&] {
      if (t == 0) return queue.empty() && in_flight == 0;
      auto it = remaining.find(t);
      return it == remaining.end() || it->second == 0;
    };
    changed.wait(lock, [&] { return complete_() || !error.empty(); });
    if (!error.empty()) {
      queue.clear();
      changed.wait(lock, [&] { return in_flight == 0; });
    }
  }

  void wait(IoTicket t) {
    std::unique_lock<std::mutex> lock(mu);
    wait_for(lock, t);
    if (!error.empty()) throw IoError(error);
    if (t != 0) remaining.erase(t);
  }
};

SwapFile::SwapFile(const std::string& dir, const std::string& name, int64_t bytes,
                   const AioOptions& options)
    : impl_(std::make_unique<Impl>()) {
  Impl& f = *impl_;
  TS_CHECK(options.block_size >= kIoAlign && options.block_size % kIoAlign == 0 &&
               options.block_size <= kMaxBlock,
           "aio block_size {} must be a multiple of {} between {} and {}", options.block_size,
           kIoAlign, kIoAlign, kMaxBlock);
  TS_CHECK(options.queue_depth >= 1 && options.queue_depth <= 4096,
           "aio queue_depth {} must be between 1 and 4096", options.queue_depth);
  TS_CHECK(bytes >= 0, "offload swap file '{}' of {} bytes", name, bytes);
  f.options = options;
  f.bytes = round_up_io(std::max<int64_t>(bytes, kIoAlign));

  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    TS_THROW(IoError,
             "offload nvme_path '{}' does not exist: create it or set "
             "zero_optimization.offload_optimizer.nvme_path (offload_param.nvme_path) to a "
             "folder on a fast disk",
             dir);
  }
  if (!S_ISDIR(st.st_mode)) {
    TS_THROW(IoError, "offload nvme_path '{}' is not a directory: point it at a folder", dir);
  }
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    TS_THROW(IoError,
             "offload nvme_path '{}' is not writable ({}): make it writable or point "
             "nvme_path elsewhere",
             dir, errno_text(errno));
  }
  f.path = fmt::format("{}/{}.{}.{}.swap", dir, name, ::getpid(), g_file_counter.fetch_add(1));
  const int flags = O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC;
  f.direct = options.direct;
  f.fd = ::open(f.path.c_str(), flags | (f.direct ? O_DIRECT : 0), 0600);
  if (f.fd < 0 && f.direct && errno == EINVAL) {
    log_once(g_logged_no_direct,
             fmt::format("offload: '{}' does not allow O_DIRECT (ramfs, tmpfs before Linux "
                         "6.6?): buffered I/O",
                         dir));
    // The file may have been created before O_DIRECT was refused (ramfs does): O_EXCL says it
    // is ours.
    ::unlink(f.path.c_str());
    f.direct = false;
    f.fd = ::open(f.path.c_str(), flags, 0600);
  }
  if (f.fd < 0) {
    TS_THROW(IoError,
             "offload: cannot create a swap file in nvme_path '{}': {}: make it "
             "writable or point nvme_path elsewhere",
             dir, errno_text(errno));
  }
  ::unlink(f.path.c_str());  // gone from the folder now; the space lives as long as fd
  try {
    const int rc = ::posix_fallocate(f.fd, 0, f.bytes);
    if (rc != 0) {
      struct statvfs vfs {};
      const int64_t free_bytes =
          ::fstatvfs(f.fd, &vfs) == 0 ? static_cast<int64_t>(vfs.f_bavail) * vfs.f_frsize : 0;
      if (rc == ENOSPC || rc == EDQUOT) {
        TS_THROW(IoError,
                 "offload: '{}' has {} free, the swap file needs {}: free space there, point "
                 "nvme_path at a larger disk, or use more data-parallel ranks (each swaps 1/N "
                 "of the states)",
                 dir, format_bytes(free_bytes), format_bytes(f.bytes));
      }
      TS_THROW(IoError, "offload: reserving {} for a swap file in '{}' failed: {}",
               format_bytes(f.bytes), dir, errno_text(rc));
    }
    if (f.direct) {
      // Some file systems accept O_DIRECT at open and refuse the first transfer instead.
      ProbePage page;
      int err = probe_transfer(f.fd, page.data, /*write=*/true);
      if (err == 0) err = probe_transfer(f.fd, page.data, /*write=*/false);
      if (err == EINVAL) {
        log_once(g_logged_no_direct,
                 fmt::format("offload: '{}' refuses O_DIRECT transfers: buffered I/O", dir));
        if (::fcntl(f.fd, F_SETFL, ::fcntl(f.fd, F_GETFL) & ~O_DIRECT) != 0) {
          TS_THROW(IoError, "offload: cannot turn O_DIRECT off on the swap file in '{}': {}", dir,
                   errno_text(errno));
        }
        f.direct = false;
      } else if (err != 0) {
        TS_THROW(IoError, "offload swap file {}: the first transfer failed: {}", f.path,
                 errno_text(err));
      }
    }
    bool uring = options.backend != AioOptions::Backend::ThreadPool;
#if TESSERA_HAVE_LIBURING
    if (uring) {
      const int rc_ring =
          io_uring_queue_init(static_cast<unsigned>(f.options.queue_depth), &f.ring, 0);
      if (rc_ring == 0) {
        f.ring_ready = true;
      } else if (options.backend == AioOptions::Backend::IoUring) {
        TS_THROW(IoError,
                 "offload: io_uring is not available here ({}): use the thread pool "
                 "(backend Auto or ThreadPool)",
                 errno_text(-rc_ring));
      } else {
        // EPERM/EACCES: a seccomp profile or io_uring_disabled; ENOSYS: an old kernel.
        log_once(g_logged_no_uring,
                 fmt::format("offload: io_uring refused ({}): a pread/pwrite thread pool",
                             errno_text(-rc_ring)));
        uring = false;
      }
    }
#else
    if (options.backend == AioOptions::Backend::IoUring) {
      TS_THROW(IoError,
               "offload: this build has no io_uring (liburing-dev was not found at "
               "build time): use the thread pool (backend Auto or ThreadPool)");
    }
    if (uring) {
      log_once(g_logged_no_uring, "offload: built without liburing: a pread/pwrite thread pool");
    }
    uring = false;
#endif
    f.backend = uring ? IoBackend::IoUring : IoBackend::ThreadPool;
    if (uring) {
#if TESSERA_HAVE_LIBURING
      f.workers.emplace_back([&f] { f.drive(); });
#endif
    } else {
      for (int i = 0; i < std::max(1, options.intra_op_parallelism); ++i) {
        f.workers.emplace_back([&f] { f.worker(); });
      }
    }
  } catch (...) {
    ::close(f.fd);
    throw;
  }
}

SwapFile::~SwapFile() {
  Impl& f = *impl_;
  {
    std::unique_lock<std::mutex> lock(f.mu);
    f.wait_for(lock, 0);
    f.stopping = true;
    f.changed.notify_all();
  }
  for (std::thread& t : f.workers) t.join();
#if TESSERA_HAVE_LIBURING
  if (f.ring_ready) io_uring_queue_exit(&f.ring);
#endif
  ::close(f.fd);
}

IoTicket SwapFile::read(int64_t offset, void* buf, int64_t bytes) {
  return impl_->submit(false, offset, buf, bytes);
}
IoTicket SwapFile::write(int64_t offset, const void* buf, int64_t bytes) {
  // The buffer is only read from (the kernel's or pwrite's source).
  return impl_->submit(true, offset, const_cast<void*>(buf), bytes);
}
void SwapFile::wait(IoTicket ticket) { impl_->wait(ticket); }
void SwapFile::wait_all() { impl_->wait(0); }
IoBackend SwapFile::backend() const { return impl_->backend; }
bool SwapFile::direct() const { return impl_->direct; }
const std::string& SwapFile::path() const { return impl_->path; }
int64_t SwapFile::bytes() const { return impl_->bytes; }
int64_t SwapFile::bytes_read() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->done_read;
}
int64_t SwapFile::bytes_written() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->done_written;
}

}  // namespace tessera::memory::offload
