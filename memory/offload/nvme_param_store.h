// ZeRO-Infinity's parameter tier on disk (offload_param.device nvme, stage 3): a rank's
// working parameter shard lives in a swap file, except its first max_in_cpu elements, which
// stay in memory. Readers fetch a layer's piece into one of buffer_count pool buffers (the
// stage-3 gatherer reads ahead along the recorded acquire order); the optimizer writes each
// updated sub-group back through two write buffers, one filling while the other is written.
//
// Coordinates are elements of the shard, [0, shard_elems). The file holds [resident, end),
// element e at (e - resident) * element size; resident and every write's begin are multiples
// of kAlignElems, so every transfer is aligned for O_DIRECT.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "memory/offload/async_io.h"
#include "memory/offload/offload_options.h"
#include "memory/param_write_back.h"
#include "runtime/core/dtype.h"
#include "runtime/core/storage.h"

namespace tessera::memory {

class NvmeParamStore final : public ParamWriteBack {
 public:
  // A multiple of kIoAlign in 2- and 4-byte elements: sub-groups and the resident part are
  // cut at multiples of it.
  static constexpr int64_t kAlignElems = 2048;

  // What a store of these options holds, without making one (the memory plan's numbers).
  // largest_piece: the most elements one fetch reads (the rank's largest layer piece);
  // write_elems: the most one write covers (a sub-group).
  struct Sizes {
    int64_t resident_elems = 0;
    int64_t pool_buffer_elems = 0;   // each of buffer_count
    int64_t write_buffer_elems = 0;  // each of two
    int64_t memory_bytes = 0;        // resident part, pool and write buffers
    int64_t file_bytes = 0;
  };
  static Sizes plan(int64_t shard_elems, DType dtype, int64_t largest_piece, int64_t write_elems,
                    const OffloadParamOptions& options);

  // Throws InvalidArgument when largest_piece exceeds offload_param.buffer_size (a layer that
  // cannot be fetched whole), IoError for a missing, unwritable or full nvme_path.
  NvmeParamStore(int64_t shard_elems, DType dtype, int64_t largest_piece, int64_t write_elems,
                 const OffloadParamOptions& options, const offload::AioOptions& aio,
                 const std::string& name);
  ~NvmeParamStore() override;
  NvmeParamStore(const NvmeParamStore&) = delete;
  NvmeParamStore& operator=(const NvmeParamStore&) = delete;

  // A piece being read: data holds [begin, end) once wait() returned. A piece inside the
  // resident part is read in place (no buffer, nothing to wait for).
  struct Fetch {
    const char* data = nullptr;
    int buffer = -1;  // the pool buffer held, or -1
    offload::IoTicket ticket = 0;
    bool pending = false;
  };
  // Starts reading; throws when every pool buffer is held (the gatherer counts them).
  Fetch fetch(int64_t begin, int64_t end);
  void wait(Fetch& fetch);
  // Waits if needed and gives the pool buffer back; data is invalid after.
  void release(Fetch& fetch);
  // Synchronous read of any range into out (checkpoints).
  void read(int64_t begin, int64_t end, void* out);

  // The buffer for [begin, end) to fill (begin a multiple of kAlignElems, end - begin at most
  // write_elems); waits for that buffer's previous write. commit() then copies the resident
  // part and writes the rest behind; flush() waits for every write.
  void* write_buffer(int64_t begin, int64_t end) override;
  void commit(int64_t begin, int64_t end) override;
  void flush() override;

  int64_t resident_elems() const { return sizes_.resident_elems; }
  int64_t memory_bytes() const { return sizes_.memory_bytes; }
  int64_t disk_bytes() const { return file_.bytes(); }
  int buffer_count() const { return static_cast<int>(pool_.size()); }
  const offload::SwapFile& file() const { return file_; }

 private:
  // The aligned file window holding the disk part of [begin, end): [first, last) in shard
  // elements, first >= resident.
  int64_t window_begin(int64_t begin) const;
  int64_t window_end(int64_t end) const;
  int64_t file_offset(int64_t elem) const { return (elem - sizes_.resident_elems) * elem_size_; }

  int64_t shard_elems_;
  int64_t elem_size_;
  Sizes sizes_;
  Storage resident_;
  std::vector<Storage> pool_;
  std::vector<int> free_;
  Storage write_buffers_[2];
  offload::IoTicket write_tickets_[2] = {0, 0};
  bool writing_[2] = {false, false};
  int next_write_ = 0;
  int filling_ = -1;  // the write buffer handed out by write_buffer()
  offload::SwapFile file_;
};

}  // namespace tessera::memory
