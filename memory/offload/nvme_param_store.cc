#include "memory/offload/nvme_param_store.h"

#include <algorithm>
#include <cstring>

#include "runtime/core/error.h"

namespace tessera::memory {

namespace {

constexpr int64_t kU = NvmeParamStore::kAlignElems;

int64_t round_down_u(int64_t e) { return e / kU * kU; }
int64_t round_up_u(int64_t e) { return (e + kU - 1) / kU * kU; }

}  // namespace

NvmeParamStore::Sizes NvmeParamStore::plan(int64_t shard_elems, DType dtype, int64_t largest_piece,
                                           int64_t write_elems,
                                           const OffloadParamOptions& options) {
  TS_CHECK(largest_piece <= options.buffer_size,
           "zero_optimization.offload_param.buffer_size {} is below this rank's largest layer "
           "piece of {} elements, which is read from disk whole: raise buffer_size to at least {}",
           options.buffer_size, largest_piece, largest_piece);
  TS_CHECK(options.buffer_count >= 2,
           "zero_optimization.offload_param.buffer_count {} is too few: a layer and the next one "
           "read ahead each take a buffer; set it to at least 2 (DeepSpeed's default is 5)",
           options.buffer_count);
  const int64_t elem = static_cast<int64_t>(dtype_size(dtype));
  Sizes s;
  s.resident_elems =
      std::min(round_down_u(std::max<int64_t>(options.max_in_cpu, 0)), round_up_u(shard_elems));
  if (s.resident_elems >= shard_elems) s.resident_elems = shard_elems;  // nothing on disk
  // A piece not aligned to kU spans at most one more unit than its rounded size.
  s.pool_buffer_elems = round_up_u(std::max<int64_t>(largest_piece, 1)) + kU;
  s.write_buffer_elems = round_up_u(std::max<int64_t>(std::min(write_elems, shard_elems), 1));
  const auto io_bytes = [&](int64_t elems) { return offload::io_storage_bytes(elems * elem); };
  s.memory_bytes = s.resident_elems * elem + options.buffer_count * io_bytes(s.pool_buffer_elems) +
                   2 * io_bytes(s.write_buffer_elems);
  s.file_bytes = std::max(round_up_u(shard_elems - s.resident_elems) * elem, offload::kIoAlign);
  return s;
}

NvmeParamStore::NvmeParamStore(int64_t shard_elems, DType dtype, int64_t largest_piece,
                               int64_t write_elems, const OffloadParamOptions& options,
                               const offload::AioOptions& aio, const std::string& name)
    : shard_elems_(shard_elems),
      elem_size_(static_cast<int64_t>(dtype_size(dtype))),
      sizes_(plan(shard_elems, dtype, largest_piece, write_elems, options)),
      file_(options.nvme_path, name, sizes_.file_bytes, aio) {
  if (sizes_.resident_elems > 0) {
    resident_ = Storage(sizes_.resident_elems * elem_size_, MemCategory::Params, Device::cpu(),
                        /*zero=*/true);
  }
  for (int b = 0; b < options.buffer_count; ++b) {
    pool_.push_back(
        offload::io_storage(sizes_.pool_buffer_elems * elem_size_, MemCategory::Params));
    free_.push_back(options.buffer_count - 1 - b);  // hand out buffer 0 first
  }
  for (Storage& w : write_buffers_) {
    w = offload::io_storage(sizes_.write_buffer_elems * elem_size_, MemCategory::Params,
                            /*zero=*/true);
  }
}

NvmeParamStore::~NvmeParamStore() {
  // The swap file's destructor waits for transfers still in flight into these buffers.
}

int64_t NvmeParamStore::window_begin(int64_t begin) const { return round_down_u(begin); }

int64_t NvmeParamStore::window_end(int64_t end) const { return round_up_u(end); }

NvmeParamStore::Fetch NvmeParamStore::fetch(int64_t begin, int64_t end) {
  TS_CHECK(begin >= 0 && begin <= end && end <= shard_elems_, "parameter shard: [{}, {}) of {}",
           begin, end, shard_elems_);
  const int64_t R = sizes_.resident_elems;
  Fetch f;
  if (end <= R) {  // in memory: read in place
    f.data = static_cast<const char*>(resident_.data()) + begin * elem_size_;
    return f;
  }
  TS_CHECK(!free_.empty(),
           "offload_param: all {} parameter buffers are held by gathered layers: raise "
           "zero_optimization.offload_param.buffer_count",
           pool_.size());
  const int64_t first = window_begin(begin), last = window_end(end);
  TS_CHECK(last - first <= sizes_.pool_buffer_elems, "parameter piece [{}, {}) over its buffer",
           begin, end);
  f.buffer = free_.back();
  free_.pop_back();
  char* buf = static_cast<char*>(pool_[f.buffer].data());
  if (begin < R) {
    std::memcpy(buf + (begin - first) * elem_size_,
                static_cast<const char*>(resident_.data()) + begin * elem_size_,
                static_cast<size_t>((R - begin) * elem_size_));
  }
  const int64_t disk_first = std::max(first, R);
  f.ticket = file_.read(file_offset(disk_first), buf + (disk_first - first) * elem_size_,
                        (last - disk_first) * elem_size_);
  f.pending = true;
  f.data = buf + (begin - first) * elem_size_;
  return f;
}

void NvmeParamStore::wait(Fetch& fetch) {
  if (!fetch.pending) return;
  fetch.pending = false;
  file_.wait(fetch.ticket);
}

void NvmeParamStore::release(Fetch& fetch) {
  if (fetch.pending) {
    try {
      wait(fetch);
    } catch (...) {
      // The file has failed and every later transfer says so; the buffer still comes back.
    }
  }
  if (fetch.buffer >= 0) free_.push_back(fetch.buffer);
  fetch = Fetch{};
}

void NvmeParamStore::read(int64_t begin, int64_t end, void* out) {
  TS_CHECK(begin >= 0 && begin <= end && end <= shard_elems_, "parameter shard: [{}, {}) of {}",
           begin, end, shard_elems_);
  const int64_t R = sizes_.resident_elems;
  char* to = static_cast<char*>(out);
  if (begin < R) {
    const int64_t n = std::min(end, R) - begin;
    std::memcpy(to, static_cast<const char*>(resident_.data()) + begin * elem_size_,
                static_cast<size_t>(n * elem_size_));
    to += n * elem_size_;
    begin += n;
  }
  if (begin >= end) return;
  // In chunks through one temporary buffer: the pool may be held by gathered layers.
  const int64_t chunk = std::min<int64_t>(window_end(end) - window_begin(begin), 16 * kU * 64);
  Storage tmp = offload::io_storage(chunk * elem_size_, MemCategory::Other);
  while (begin < end) {
    const int64_t first = window_begin(begin);
    const int64_t last = std::min(window_end(end), first + chunk);
    file_.wait(file_.read(file_offset(first), tmp.data(), (last - first) * elem_size_));
    const int64_t n = std::min(end, last) - begin;
    std::memcpy(to, static_cast<const char*>(tmp.data()) + (begin - first) * elem_size_,
                static_cast<size_t>(n * elem_size_));
    to += n * elem_size_;
    begin += n;
  }
}

void* NvmeParamStore::write_buffer(int64_t begin, int64_t end) {
  TS_CHECK(begin % kU == 0 && begin <= end && end <= shard_elems_ &&
               end - begin <= sizes_.write_buffer_elems,
           "parameter write [{}, {}) of {}: not aligned or larger than a sub-group", begin, end,
           shard_elems_);
  TS_CHECK(filling_ < 0, "write_buffer() twice without commit()");
  filling_ = next_write_;
  next_write_ = 1 - next_write_;
  if (writing_[filling_]) {
    writing_[filling_] = false;
    file_.wait(write_tickets_[filling_]);
  }
  return write_buffers_[filling_].data();
}

void NvmeParamStore::commit(int64_t begin, int64_t end) {
  TS_CHECK(filling_ >= 0, "commit() without write_buffer()");
  const int b = filling_;
  filling_ = -1;
  const int64_t R = sizes_.resident_elems;
  const char* buf = static_cast<const char*>(write_buffers_[b].data());
  if (begin < R) {
    std::memcpy(static_cast<char*>(resident_.data()) + begin * elem_size_, buf,
                static_cast<size_t>((std::min(end, R) - begin) * elem_size_));
  }
  if (end <= R) return;
  const int64_t disk_first = std::max(begin, R);
  write_tickets_[b] = file_.write(file_offset(disk_first), buf + (disk_first - begin) * elem_size_,
                                  (window_end(end) - disk_first) * elem_size_);
  writing_[b] = true;
}

void NvmeParamStore::flush() {
  for (int b = 0; b < 2; ++b) {
    if (!writing_[b]) continue;
    writing_[b] = false;
    file_.wait(write_tickets_[b]);
  }
}

}  // namespace tessera::memory
