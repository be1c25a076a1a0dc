// The offload tier's async I/O (memory/offload/async_io.h):
// - random data written and read back intact on io_uring and on the thread pool (1 and 4
//   threads), with chunks smaller than the transfers so many are in flight beyond the queue
//   depth, single_submit and overlap_events off, tickets waited out of order;
// - io_storage's buffers are page-aligned and at least the size asked for;
// - O_DIRECT on the normal disk (where the file system takes it), buffered I/O on a file
//   system that refuses it (ramfs) and when asked, intact data on tmpfs either way;
// - the swap file is never visible in its folder; a read never waited for is complete when
//   the destructor returns; several files at once on thread ranks;
// - a missing folder, a file for a folder, misaligned transfers, a full disk: one-line errors;
// - an injected EIO fails its ticket and every later wait, and nothing hangs.
#include "memory/offload/async_io.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "runtime/core/error.h"

namespace tessera::memory::offload {
namespace {

namespace fs = std::filesystem;

struct Folder {
  explicit Folder(const fs::path& under = fs::temp_directory_path()) {
    std::string tmpl = (under / "tessera_aio_XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp " + tmpl);
    path = tmpl;
  }
  ~Folder() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string path;
};

Storage random_buffer(int64_t bytes, uint32_t seed) {
  Storage s = io_storage(bytes, MemCategory::Other);
  std::mt19937 gen(seed);
  auto* p = static_cast<uint32_t*>(s.data());
  for (int64_t i = 0; i < bytes / 4; ++i) p[i] = gen();
  return s;
}

bool same(const Storage& a, const Storage& b, int64_t bytes) {
  return std::memcmp(a.data(), b.data(), static_cast<size_t>(bytes)) == 0;
}

struct Case {
  const char* name;
  AioOptions::Backend backend;
  int threads;
  bool single_submit, overlap_events;
};

class AsyncIoRoundTrip : public testing::TestWithParam<Case> {};

TEST_P(AsyncIoRoundTrip, ManyTransfersInFlightComeBackIntact) {
  const Case c = GetParam();
  Folder dir;
  AioOptions o;
  o.backend = c.backend;
  o.block_size = 64 << 10;
  o.queue_depth = 4;
  o.intra_op_parallelism = c.threads;
  o.single_submit = c.single_submit;
  o.overlap_events = c.overlap_events;
  constexpr int kParts = 6;
  constexpr int64_t kPart = (1 << 20) + 3 * kIoAlign;  // not a multiple of the block size
  std::unique_ptr<SwapFile> file;
  try {
    file = std::make_unique<SwapFile>(dir.path, "rt", kParts * kPart, o);
  } catch (const IoError& e) {
    if (c.backend == AioOptions::Backend::IoUring) GTEST_SKIP() << "no io_uring here: " << e.what();
    throw;
  }
  EXPECT_EQ(file->backend(),
            c.backend == AioOptions::Backend::IoUring ? IoBackend::IoUring : IoBackend::ThreadPool);
  std::vector<Storage> out, in;
  std::vector<IoTicket> tickets;
  for (int i = 0; i < kParts; ++i) {
    out.push_back(random_buffer(kPart, static_cast<uint32_t>(i + 1)));
    tickets.push_back(file->write(i * kPart, out.back().data(), kPart));
  }
  for (int i = kParts - 1; i >= 0; --i) file->wait(tickets[static_cast<size_t>(i)]);
  tickets.clear();
  for (int i = 0; i < kParts; ++i) {
    in.push_back(io_storage(kPart, MemCategory::Other, /*zero=*/true));
    tickets.push_back(file->read(i * kPart, in.back().data(), kPart));
  }
  file->wait(tickets[3]);
  EXPECT_TRUE(same(in[3], out[3], kPart));
  file->wait_all();
  for (int i = 0; i < kParts; ++i) EXPECT_TRUE(same(in[i], out[i], kPart)) << "part " << i;
  EXPECT_EQ(file->bytes_written(), kParts * kPart);
  EXPECT_EQ(file->bytes_read(), kParts * kPart);
  // Unlinked at creation: the folder is empty while the file is in use.
  EXPECT_TRUE(fs::is_empty(dir.path));
}

INSTANTIATE_TEST_SUITE_P(
    AsyncIo, AsyncIoRoundTrip,
    testing::Values(Case{"io_uring", AioOptions::Backend::IoUring, 1, false, true},
                    Case{"io_uring_single_submit", AioOptions::Backend::IoUring, 1, true, true},
                    Case{"io_uring_batches", AioOptions::Backend::IoUring, 1, false, false},
                    Case{"thread_pool_1", AioOptions::Backend::ThreadPool, 1, false, true},
                    Case{"thread_pool_4", AioOptions::Backend::ThreadPool, 4, false, true}),
    [](const testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

// A folder on a RAM file system that refuses O_DIRECT at open (ramfs; tmpfs accepts it since
// Linux 6.6), mounted for the test, or skipped.
struct RamFolder {
  RamFolder() {
    if (::geteuid() != 0) return;
    fs::create_directories(folder.path + "/ram");
    if (std::system(("mount -t ramfs ramfs " + folder.path + "/ram 2>/dev/null").c_str()) == 0) {
      path = folder.path + "/ram";
    }
  }
  ~RamFolder() {
    if (!path.empty()) std::system(("umount " + path).c_str());
  }
  Folder folder;
  std::string path;  // "" when it could not be mounted
};

void expect_round_trip(SwapFile& f) {
  Storage out = random_buffer(1 << 20, 9), in = io_storage(1 << 20, MemCategory::Other, true);
  f.wait(f.write(0, out.data(), 1 << 20));
  f.wait(f.read(0, in.data(), 1 << 20));
  EXPECT_TRUE(same(in, out, 1 << 20));
}

// Whether `dir` takes an aligned O_DIRECT write, asked directly of the kernel.
bool takes_direct_io(const std::string& dir) {
  const std::string probe = dir + "/probe";
  const int fd = ::open(probe.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  Storage page = io_storage(kIoAlign, MemCategory::Other, /*zero=*/true);
  const bool ok = ::pwrite(fd, page.data(), kIoAlign, 0) == kIoAlign;
  ::close(fd);
  ::unlink(probe.c_str());
  return ok;
}

TEST(AsyncIo, BuffersAreAlignedAndLargeEnough) {
  for (const int64_t bytes : {int64_t{1}, kIoAlign, int64_t{100'000}, int64_t{3} << 20}) {
    Storage s = io_storage(bytes, MemCategory::Other);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(s.data()) % kIoAlign, 0u) << bytes;
    EXPECT_GE(static_cast<int64_t>(s.bytes()), round_up_io(bytes)) << bytes;
    EXPECT_EQ(static_cast<int64_t>(s.bytes()), io_storage_bytes(bytes)) << bytes;
  }
}

TEST(AsyncIo, DirectOnDiskBufferedWhereItIsRefused) {
  Folder disk;
  SwapFile on_disk(disk.path, "direct", 1 << 20, {});
  // The test's temporary folder is on ext4 here; where its file system refuses O_DIRECT the
  // fallback is what runs, and only the data is checked.
  if (takes_direct_io(disk.path)) {
    EXPECT_TRUE(on_disk.direct()) << disk.path;
  } else {
    std::cout << "note: " << disk.path << " refuses O_DIRECT\n";
  }
  expect_round_trip(on_disk);

  AioOptions buffered_options;
  buffered_options.direct = false;
  SwapFile asked_buffered(disk.path, "buffered", 1 << 20, buffered_options);
  EXPECT_FALSE(asked_buffered.direct());
  expect_round_trip(asked_buffered);

  // tmpfs takes O_DIRECT since Linux 6.6 and refused it before: intact data either way.
  if (fs::is_directory("/dev/shm") && ::access("/dev/shm", W_OK) == 0) {
    Folder shm("/dev/shm");
    SwapFile on_tmpfs(shm.path, "tmpfs", 1 << 20, {});
    EXPECT_EQ(on_tmpfs.direct(), takes_direct_io(shm.path));
    expect_round_trip(on_tmpfs);
    EXPECT_TRUE(fs::is_empty(shm.path));
  }

  RamFolder ram;
  if (ram.path.empty()) GTEST_SKIP() << "cannot mount a ramfs here (needs root)";
  for (const auto backend : {AioOptions::Backend::Auto, AioOptions::Backend::ThreadPool}) {
    AioOptions o;
    o.backend = backend;
    SwapFile buffered(ram.path, "buffered", 1 << 20, o);
    EXPECT_FALSE(buffered.direct());
    expect_round_trip(buffered);
    EXPECT_TRUE(fs::is_empty(ram.path));  // the refused O_DIRECT open left nothing either
  }
}

TEST(AsyncIo, TheDestructorFinishesWhatWasNeverWaitedFor) {
  Folder dir;
  for (const auto backend : {AioOptions::Backend::Auto, AioOptions::Backend::ThreadPool}) {
    AioOptions o;
    o.backend = backend;
    o.block_size = 64 << 10;
    o.queue_depth = 2;
    constexpr int64_t kBytes = 3 << 20;
    Storage out = random_buffer(kBytes, 11), in = io_storage(kBytes, MemCategory::Other, true);
    {
      SwapFile f(dir.path, "unwaited", kBytes, o);
      f.wait(f.write(0, out.data(), kBytes));
      f.read(0, in.data(), kBytes);  // 48 chunks, 2 in flight at a time: not done yet
    }
    EXPECT_TRUE(same(in, out, kBytes)) << io_backend_name(
        backend == AioOptions::Backend::Auto ? IoBackend::IoUring : IoBackend::ThreadPool);
  }
}

TEST(AsyncIo, SeveralFilesAtOnceOnThreadRanks) {
  Folder dir;
  std::vector<std::thread> ranks;
  std::vector<int> intact(4, 0);
  for (int r = 0; r < 4; ++r) {
    ranks.emplace_back([&, r] {
      AioOptions o;
      o.backend = r % 2 == 0 ? AioOptions::Backend::Auto : AioOptions::Backend::ThreadPool;
      o.block_size = 128 << 10;
      constexpr int64_t kBytes = 2 << 20;
      SwapFile f(dir.path, "rank" + std::to_string(r), 2 * kBytes, o);
      Storage out = random_buffer(kBytes, 100 + r), in = io_storage(kBytes, MemCategory::Other);
      for (int round = 0; round < 4; ++round) {
        const int64_t at = (round % 2) * kBytes;
        f.wait(f.write(at, out.data(), kBytes));
        f.wait(f.read(at, in.data(), kBytes));
        intact[r] += same(in, out, kBytes) ? 1 : 0;
      }
    });
  }
  for (std::thread& t : ranks) t.join();
  for (int r = 0; r < 4; ++r) EXPECT_EQ(intact[r], 4) << "rank " << r;
  EXPECT_TRUE(fs::is_empty(dir.path));
}

std::string io_error(const std::string& dir, int64_t bytes) {
  try {
    SwapFile f(dir, "bad", bytes, {});
  } catch (const IoError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(AsyncIo, BadFoldersAndMisalignedTransfersAreRefused) {
  Folder dir;
  const std::string missing = io_error(dir.path + "/nowhere", 1 << 20);
  EXPECT_NE(missing.find("does not exist"), std::string::npos) << missing;
  EXPECT_NE(missing.find("nowhere"), std::string::npos) << missing;
  std::ofstream(dir.path + "/plain") << "x";
  const std::string plain = io_error(dir.path + "/plain", 1 << 20);
  EXPECT_NE(plain.find("not a directory"), std::string::npos) << plain;
  SwapFile f(dir.path, "align", 1 << 20, {});
  Storage buf = io_storage(8192, MemCategory::Other);
  EXPECT_THROW(f.write(100, buf.data(), 4096), InvalidArgument);
  EXPECT_THROW(f.write(0, buf.data(), 1000), InvalidArgument);
  EXPECT_THROW(f.write(0, static_cast<char*>(buf.data()) + 8, 4096), InvalidArgument);
  EXPECT_THROW(f.read(1 << 20, buf.data(), 4096), InvalidArgument);  // past the end
}

TEST(AsyncIo, AFullDiskIsAnErrorAtCreation) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting a small tmpfs needs root";
  Folder dir;
  const std::string mnt = dir.path + "/small";
  fs::create_directories(mnt);
  if (std::system(("mount -t tmpfs -o size=4m tmpfs " + mnt + " 2>/dev/null").c_str()) != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here";
  }
  const std::string full = io_error(mnt, 8 << 20);
  std::system(("umount " + mnt).c_str());
  EXPECT_NE(full.find("free"), std::string::npos) << full;
  EXPECT_NE(full.find("8.0 MiB"), std::string::npos) << full;
}

TEST(AsyncIo, AnInjectedErrorFailsItsTicketAndEveryLaterWait) {
  Folder dir;
  const Case cases[] = {{"io_uring", AioOptions::Backend::Auto, 1, false, true},
                        {"io_uring_batches", AioOptions::Backend::Auto, 1, false, false},
                        {"thread_pool_1", AioOptions::Backend::ThreadPool, 1, false, true},
                        {"thread_pool_4", AioOptions::Backend::ThreadPool, 4, false, true}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    AioOptions o;
    o.backend = c.backend;
    o.intra_op_parallelism = c.threads;
    o.overlap_events = c.overlap_events;
    o.block_size = 64 << 10;
    SwapFile f(dir.path, "eio", 4 << 20, o);
    Storage buf = random_buffer(2 << 20, 3), other = io_storage(1 << 20, MemCategory::Other);
    inject_io_error_after(3);  // the third chunk of 32
    const IoTicket t = f.write(0, buf.data(), 2 << 20);
    // io_uring starts chunks inside write(), so the error may be known before this read.
    std::optional<IoTicket> later;
    std::string refused;
    try {
      later = f.read(2 << 20, other.data(), 1 << 20);
    } catch (const IoError& e) {
      refused = e.what();
    }
    std::string first;
    try {
      f.wait(t);
      ADD_FAILURE() << "the injected error did not fail the write";
    } catch (const IoError& e) {
      first = e.what();
      EXPECT_NE(first.find("Input/output error"), std::string::npos) << first;
      EXPECT_NE(first.find("swap file " + f.path()), std::string::npos) << first;
      EXPECT_NE(first.find("write of"), std::string::npos) << first;
      EXPECT_NE(first.find("at offset 131072"), std::string::npos) << first;  // chunk 3
    }
    inject_io_error_after(0);
    // Every later wait fails with the same reason, and nothing hangs (the test would time out).
    // The reason is the same each time; only the throwing line's [file:line] differs.
    const auto reason = [](const std::string& m) { return m.substr(0, m.find(" [")); };
    if (later) {
      try {
        f.wait(*later);
        ADD_FAILURE() << "a wait after the error succeeded";
      } catch (const IoError& e) {
        EXPECT_EQ(reason(e.what()), reason(first));
      }
    } else {
      EXPECT_EQ(reason(refused), reason(first));
    }
    EXPECT_THROW(f.wait_all(), IoError);
    EXPECT_THROW(f.read(0, buf.data(), 4096), IoError);
    EXPECT_LT(f.bytes_written(), 2 << 20);  // the dropped chunks are not counted
  }
}

}  // namespace
}  // namespace tessera::memory::offload
