// Where the optimizer writes an updated sub-group of the working parameters when they do not
// live in memory it can write directly: a swap file (NvmeParamStore) or a device's memory
// behind a copy engine (HostTier). write_buffer() hands out a buffer for shard elements
// [begin, end), commit() sends it on, flush() waits until everything sent has landed.
#pragma once

#include <cstdint>

namespace tessera::memory {

class ParamWriteBack {
 public:
  virtual ~ParamWriteBack() = default;
  virtual void* write_buffer(int64_t begin, int64_t end) = 0;
  virtual void commit(int64_t begin, int64_t end) = 0;
  virtual void flush() = 0;
};

}  // namespace tessera::memory
