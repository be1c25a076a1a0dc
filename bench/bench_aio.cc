// Benchmark (not a test): offload's async I/O engine against the raw disk (docs/PERFORMANCE.md,
// "Async I/O (offload's disk tier)").
//
// A swap file of --size GiB in --dir is written twice (fresh, where the file system converts
// fallocate's unwritten extents, then again over the written ones: what every later training
// step does) and read once, sequentially, in transfers of --transfer bytes with --inflight of
// them outstanding; each transfer is cut into requests of 128 KiB, 1, 4 and 8 MiB. Engines:
// io_uring and the pread/pwrite thread pool (1 and 4 threads) on O_DIRECT, and io_uring on
// buffered I/O for reference (its writes land in the page cache and its reads come from it:
// the file was just written). The engines move io_storage buffers (2 MiB aligned, transparent
// huge pages); io_uring runs once more from 4 KiB pages (MADV_NOHUGEPAGE), the memory dd and
// fio use: a virtio disk takes at most max_segments (254 here) pages per request, so from
// 4 KiB pages a 1 MiB request is split in two.
//
// The raw disk: dd with O_DIRECT and 1 MiB blocks on a file of the same size in the same
// folder (write fresh, write again with conv=notrunc, read); and, where fio is installed
// (optional, not a tessera dependency), fio on io_uring with O_DIRECT at each block size and
// iodepth = --queue-depth: the disk at the engine's own request size and depth, the
// like-for-like reference. Every round runs dd, fio and every engine once, in turn, so drifts
// of a shared disk hit all alike; the table is the medians over --rounds.
//
//   build/bench/bench_aio                          (2 GiB under $TMPDIR or /tmp, 3 rounds)
//   build/bench/bench_aio --dir /mnt/nvme --size 8 --rounds 5
#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "memory/offload/async_io.h"
#include "runtime/core/logging.h"

namespace {

using namespace tessera;
using namespace tessera::memory::offload;
namespace fs = std::filesystem;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// GB/s (1e9 bytes per second) of the three passes.
struct Rates {
  std::vector<double> fresh, again, read;
  void add(double bytes, double t_fresh, double t_again, double t_read) {
    fresh.push_back(bytes / t_fresh / 1e9);
    again.push_back(bytes / t_again / 1e9);
    read.push_back(bytes / t_read / 1e9);
  }
};

struct Engine {
  AioOptions::Backend backend;
  int threads;
  bool direct;
  bool small_pages = false;  // the transfers' memory in 4 KiB pages, not huge pages
};

// `count` buffers of `bytes` in 4 KiB pages, random bytes like the io_storage ones.
struct SmallPageBuffers {
  SmallPageBuffers(int count, int64_t bytes) {
    for (int i = 0; i < count; ++i) {
      void* p = std::aligned_alloc(kIoAlign, static_cast<size_t>(bytes));
      if (p == nullptr) throw std::bad_alloc();
      madvise(p, static_cast<size_t>(bytes), MADV_NOHUGEPAGE);
      std::memset(p, 0x5a + i, static_cast<size_t>(bytes));
      data.push_back(p);
    }
  }
  ~SmallPageBuffers() {
    for (void* p : data) std::free(p);
  }
  SmallPageBuffers(const SmallPageBuffers&) = delete;
  SmallPageBuffers& operator=(const SmallPageBuffers&) = delete;
  std::vector<void*> data;
};

struct Config {
  Engine engine;
  int64_t block = 0;
  Rates rates;
  bool direct_used = false;
  std::string backend_used;
};

void run_engine(const std::string& dir, int64_t bytes, int64_t transfer,
                const std::vector<void*>& buffers, int queue_depth, Config& c) {
  AioOptions o;
  o.backend = c.engine.backend;
  o.intra_op_parallelism = c.engine.threads;
  o.direct = c.engine.direct;
  o.block_size = c.block;
  o.queue_depth = queue_depth;
  SwapFile f(dir, "bench_aio", bytes, o);
  c.direct_used = f.direct();
  c.backend_used = io_backend_name(f.backend());
  std::vector<IoTicket> tickets(buffers.size(), 0);
  const auto pass = [&](bool write) {
    const double t0 = now_s();
    for (int64_t at = 0, i = 0; at < bytes; at += transfer, ++i) {
      const size_t slot = static_cast<size_t>(i) % buffers.size();
      if (tickets[slot] != 0) f.wait(tickets[slot]);
      void* buf = buffers[slot];
      const int64_t n = std::min(transfer, bytes - at);
      tickets[slot] = write ? f.write(at, buf, n) : f.read(at, buf, n);
    }
    f.wait_all();
    std::fill(tickets.begin(), tickets.end(), 0);
    return now_s() - t0;
  };
  const double t_fresh = pass(true);
  const double t_again = pass(true);
  const double t_read = pass(false);
  c.rates.add(static_cast<double>(bytes), t_fresh, t_again, t_read);
}

// Seconds of one dd command (its own report goes to /dev/null); throws if it fails.
double time_dd(const std::string& args) {
  const std::string cmd = "dd " + args + " status=none 2>/dev/null";
  const double t0 = now_s();
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error("failed: " + cmd);
  return now_s() - t0;
}

void run_dd(const std::string& dir, int64_t bytes, Rates& rates) {
  const std::string file = fmt::format("{}/tessera_bench_aio_dd.{}.bin", dir, ::getpid());
  const int64_t count = bytes >> 20;
  const double t_fresh =
      time_dd(fmt::format("if=/dev/zero of={} bs=1M count={} oflag=direct", file, count));
  const double t_again = time_dd(
      fmt::format("if=/dev/zero of={} bs=1M count={} oflag=direct conv=notrunc", file, count));
  const double t_read = time_dd(fmt::format("if={} of=/dev/null bs=1M iflag=direct", file));
  fs::remove(file);
  rates.add(static_cast<double>(count << 20), t_fresh, t_again, t_read);
}

bool have_fio() { return std::system("fio --version >/dev/null 2>&1") == 0; }

// GB/s as fio reports it (its own clock, so its start-up and layout are not counted).
double fio_rate(const std::string& file, int64_t bytes, int64_t block, const std::string& rw,
                int depth) {
  const std::string out = file + ".json";
  const std::string cmd = fmt::format(
      "fio --name=raw --filename={} --size={} --bs={} --rw={} --direct=1 --ioengine=io_uring "
      "--iodepth={} --output-format=json --output={} >/dev/null 2>&1",
      file, bytes, block, rw, depth, out);
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error("failed: " + cmd);
  std::ifstream in(out);
  const nlohmann::json j = nlohmann::json::parse(in);
  fs::remove(out);
  const std::string side = rw == "read" ? "read" : "write";
  return j.at("jobs").at(0).at(side).at("bw_bytes").get<double>() / 1e9;
}

void run_fio(const std::string& dir, int64_t bytes, int64_t block, int depth, Rates& rates) {
  const std::string file = fmt::format("{}/tessera_bench_aio_fio.{}.bin", dir, ::getpid());
  rates.fresh.push_back(fio_rate(file, bytes, block, "write", depth));
  rates.again.push_back(fio_rate(file, bytes, block, "write", depth));
  rates.read.push_back(fio_rate(file, bytes, block, "read", depth));
  fs::remove(file);
}

std::string block_name(int64_t b) {
  return b >= (1 << 20) ? fmt::format("{} MiB", b >> 20) : fmt::format("{} KiB", b >> 10);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_aio: offload's swap-file I/O against dd with O_DIRECT"};
  double size_gib = 2.0;
  std::string dir;
  int64_t transfer = 64 << 20;
  int inflight = 2, rounds = 3, queue_depth = 8;
  std::vector<int64_t> blocks = {128 << 10, 1 << 20, 4 << 20, 8 << 20};
  app.add_option("--size", size_gib, "file size, GiB")->capture_default_str();
  app.add_option("--dir", dir, "folder for the files (default: $TMPDIR or /tmp)");
  app.add_option("--transfer", transfer, "bytes per read / write call")->capture_default_str();
  app.add_option("--inflight", inflight, "transfers outstanding")->capture_default_str();
  app.add_option("--queue-depth", queue_depth, "aio queue_depth")->capture_default_str();
  app.add_option("--blocks", blocks, "aio block_size values, bytes");
  app.add_option("--rounds", rounds, "rounds (medians are printed)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  init_logging();
  if (dir.empty()) dir = fs::temp_directory_path().string();
  transfer = round_up_io(transfer);
  // Whole MiB (dd's unit) and whole transfers.
  const int64_t bytes =
      std::max<int64_t>(static_cast<int64_t>(size_gib * (1 << 30)) / transfer, 1) * transfer;

  const std::vector<Engine> engines = {
      {AioOptions::Backend::Auto, 1, true},  // io_uring where allowed
      {AioOptions::Backend::ThreadPool, 1, true},
      {AioOptions::Backend::ThreadPool, 4, true},
      {AioOptions::Backend::Auto, 1, true, /*small_pages=*/true},
      {AioOptions::Backend::Auto, 1, false},  // reference: the page cache
  };
  std::vector<Config> configs;
  for (const Engine& e : engines) {
    for (const int64_t b : blocks) configs.push_back({e, b, {}, false, ""});
  }

  fmt::print(
      "bench_aio: {:.2f} GiB file in {}, transfers of {} ({} outstanding), "
      "queue_depth {}, {} rounds\n",
      static_cast<double>(bytes) / (1 << 30), dir, block_name(transfer), inflight, queue_depth,
      rounds);
  std::vector<Storage> storages;
  std::vector<void*> huge;
  std::mt19937_64 gen(1);
  for (int i = 0; i < inflight; ++i) {
    storages.push_back(io_storage(transfer, MemCategory::Other));
    huge.push_back(storages.back().data());
    auto* p = static_cast<uint64_t*>(huge.back());
    for (int64_t k = 0; k < transfer / 8; ++k) p[k] = gen();  // not zeros: no shortcut anywhere
  }
  SmallPageBuffers small(inflight, transfer);
  for (void* buf : small.data) std::memcpy(buf, huge[0], static_cast<size_t>(transfer));

  const bool fio = have_fio();
  if (!fio) fmt::print("fio not found: dd is the only raw reference\n");
  Rates dd;
  std::vector<Rates> raw_fio(blocks.size());  // per block size
  for (int r = 0; r < rounds; ++r) {
    run_dd(dir, bytes, dd);
    for (size_t b = 0; fio && b < blocks.size(); ++b) {
      run_fio(dir, bytes, blocks[b], queue_depth, raw_fio[b]);
    }
    for (Config& c : configs) {
      run_engine(dir, bytes, transfer, c.engine.small_pages ? small.data : huge, queue_depth, c);
      if (!c.engine.direct) ::sync();  // its dirty pages are not the next engine's cost
    }
    fmt::print("round {} done\n", r + 1);
    std::fflush(stdout);
  }

  const auto ratios = [](double fr, double ag, double rd, const Rates& raw) {
    if (raw.fresh.empty()) return std::string("-");
    return fmt::format("{:.0f}% / {:.0f}% / {:.0f}%", 100 * fr / median(raw.fresh),
                       100 * ag / median(raw.again), 100 * rd / median(raw.read));
  };
  const auto spread = [](const std::vector<double>& v) {
    if (v.empty()) return std::string("-");
    return fmt::format("{:.2f}-{:.2f}", *std::min_element(v.begin(), v.end()),
                       *std::max_element(v.begin(), v.end()));
  };
  fmt::print(
      "\n| engine | block | O_DIRECT | write, fresh GB/s | write again GB/s | read GB/s "
      "| of dd: fresh / again / read | of fio, same block |\n"
      "|---|---|---|---|---|---|---|---|\n");
  fmt::print("| dd, oflag/iflag=direct | 1 MiB | yes | {:.2f} | {:.2f} | {:.2f} | - | - |\n",
             median(dd.fresh), median(dd.again), median(dd.read));
  for (size_t b = 0; fio && b < blocks.size(); ++b) {
    const Rates& f = raw_fio[b];
    fmt::print("| fio, io_uring, iodepth {} | {} | yes | {:.2f} | {:.2f} | {:.2f} | {} | - |\n",
               queue_depth, block_name(blocks[b]), median(f.fresh), median(f.again), median(f.read),
               ratios(median(f.fresh), median(f.again), median(f.read), dd));
  }
  for (const Config& c : configs) {
    const size_t b =
        static_cast<size_t>(std::find(blocks.begin(), blocks.end(), c.block) - blocks.begin());
    const double fr = median(c.rates.fresh), ag = median(c.rates.again), rd = median(c.rates.read);
    std::string name = c.backend_used;
    if (c.backend_used == io_backend_name(IoBackend::ThreadPool)) {
      name += fmt::format(", {} thread{}", c.engine.threads, c.engine.threads == 1 ? "" : "s");
    }
    if (!c.direct_used) name += ", buffered";
    if (c.engine.small_pages) name += ", 4 KiB pages";
    fmt::print("| {} | {} | {} | {:.2f} | {:.2f} | {:.2f} | {} | {} |\n", name, block_name(c.block),
               c.direct_used ? "yes" : "no", fr, ag, rd, ratios(fr, ag, rd, dd),
               ratios(fr, ag, rd, raw_fio[b]));
  }
  fmt::print("\nspread over rounds (min-max GB/s, fresh / again / read): dd {} / {} / {}\n",
             spread(dd.fresh), spread(dd.again), spread(dd.read));
  for (size_t b = 0; fio && b < blocks.size(); ++b) {
    fmt::print("  fio {}: {} / {} / {}\n", block_name(blocks[b]), spread(raw_fio[b].fresh),
               spread(raw_fio[b].again), spread(raw_fio[b].read));
  }
  for (const Config& c : configs) {
    fmt::print(
        "  {}{}{} {}: {} / {} / {}\n", c.backend_used,
        c.engine.backend == AioOptions::Backend::ThreadPool ? fmt::format(" x{}", c.engine.threads)
                                                            : "",
        std::string(c.direct_used ? "" : " buffered") + (c.engine.small_pages ? " 4k-pages" : ""),
        block_name(c.block), spread(c.rates.fresh), spread(c.rates.again), spread(c.rates.read));
  }
  return 0;
}
