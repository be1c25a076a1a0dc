// Asynchronous file I/O for the disk tier of offload (ZeRO-Infinity's NVMe swap): aligned
// transfers on O_DIRECT files through io_uring, with fallbacks that keep working where the
// kernel or the file system refuses: a pread/pwrite thread pool where io_uring is not allowed
// (EPERM, ENOSYS), buffered I/O where O_DIRECT is refused (ramfs, tmpfs before Linux 6.6:
// EINVAL). Each fallback is
// logged once per process.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "runtime/core/storage.h"

namespace tessera::memory::offload {

// Offsets, sizes and buffer addresses of every transfer are multiples of this.
inline constexpr int64_t kIoAlign = 4096;
inline int64_t round_up_io(int64_t bytes) { return (bytes + kIoAlign - 1) / kIoAlign * kIoAlign; }

// DeepSpeed's `aio` block, with its defaults.
struct AioOptions {
  int64_t block_size = 1 << 20;  // bytes per request: a larger transfer is split into these
  int queue_depth = 8;           // requests in flight per file
  int intra_op_parallelism = 1;  // threads issuing requests (the thread pool's size)
  bool single_submit = false;    // one request per submission instead of a batch
  bool overlap_events = true;    // submit new requests while earlier ones complete
  // Not DeepSpeed's: tests force a backend or buffered I/O.
  enum class Backend { Auto, IoUring, ThreadPool };
  Backend backend = Backend::Auto;
  bool direct = true;  // try O_DIRECT first
};

enum class IoBackend { IoUring, ThreadPool };
const char* io_backend_name(IoBackend backend);

// Host memory aligned to kIoAlign, at least `bytes` rounded up to a multiple of it, charged
// to the tracker's `category`; io_storage_bytes(bytes) is what it allocates (Storage aligns
// only buffers of 2 MiB and more to a page, so smaller ones are rounded up to that).
Storage io_storage(int64_t bytes, MemCategory category, bool zero = false);
int64_t io_storage_bytes(int64_t bytes);

using IoTicket = uint64_t;

// A swap file of `bytes`, created in `dir` and unlinked from it at once: its space comes back
// when the process ends, however it ends, and no file is left behind. The space is reserved
// up front (fallocate), so a full disk is an error at start, not mid-step.
//
// Used by one thread at a time. Transfers are asynchronous: read / write return a ticket at
// once, wait(ticket) blocks until it is done. An I/O error fails that ticket and every later
// wait, read and write (the file's state is then unknown), each with a one-line IoError naming
// the file, the operation, the offset and the system's reason. bytes() is the size asked for
// rounded up to kIoAlign.
class SwapFile {
 public:
  // Throws IoError when dir is missing, not a directory, not writable, or lacks the space
  // (the message names the bytes needed and the bytes free).
  SwapFile(const std::string& dir, const std::string& name, int64_t bytes,
           const AioOptions& options);
  ~SwapFile();  // waits for every transfer in flight
  SwapFile(const SwapFile&) = delete;
  SwapFile& operator=(const SwapFile&) = delete;

  // offset, bytes and buf multiples of kIoAlign, [offset, offset + bytes) within the file;
  // buf must stay valid until the ticket is waited for.
  IoTicket read(int64_t offset, void* buf, int64_t bytes);
  IoTicket write(int64_t offset, const void* buf, int64_t bytes);
  void wait(IoTicket ticket);
  void wait_all();

  IoBackend backend() const;
  bool direct() const;  // O_DIRECT in use
  const std::string& path() const;  // where it was created (already unlinked)
  int64_t bytes() const;
  int64_t bytes_read() const;
  int64_t bytes_written() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Fault injection for tests: the n-th transfer request from now on (counted over every swap
// file of the process, 1-based) fails with EIO; 0 turns it off. The setting
// TESSERA_OFFLOAD_FAIL_AFTER does the same for a whole run.
void inject_io_error_after(int64_t n);

}  // namespace tessera::memory::offload
