// `tessera prepare`: text -> train/val token files with the byte-level tokenizer.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "launch/byte_tokenizer.h"
#include "launch/commands.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/engine/token_data.h"

namespace tessera::launch {

int run_prepare(const PrepareOptions& opts) {
  namespace fs = std::filesystem;
  std::ifstream in(opts.input, std::ios::binary);
  TS_CHECK(in.good(), "cannot read input text '{}': check the path", opts.input);
  TS_CHECK(opts.val_fraction >= 0.0 && opts.val_fraction < 1.0,
           "--val-fraction {} must be in [0, 1)", opts.val_fraction);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  TS_CHECK(text.size() >= 2, "input '{}' holds {} bytes: too little text to train on", opts.input,
           text.size());
  const std::vector<int32_t> ids = encode_bytes(text);
  // The validation split is the tail, as nanoGPT's shakespeare_char does: no leakage across
  // the boundary beyond one window.
  const size_t n_val = static_cast<size_t>(static_cast<double>(ids.size()) * opts.val_fraction);
  const size_t n_train = ids.size() - n_val;
  std::vector<uint16_t> train(ids.begin(), ids.begin() + n_train);
  std::vector<uint16_t> val(ids.begin() + n_train, ids.end());
  fs::create_directories(opts.out_dir);
  const std::string stem = opts.name.empty() ? fs::path(opts.input).stem().string() : opts.name;
  const std::string train_path = (fs::path(opts.out_dir) / (stem + "_train.bin")).string();
  const std::string val_path = (fs::path(opts.out_dir) / (stem + "_val.bin")).string();
  engine::write_token_file(train_path, train);
  log_rank0("wrote {} ({} tokens)", train_path, train.size());
  if (!val.empty()) {
    engine::write_token_file(val_path, val);
    log_rank0("wrote {} ({} tokens)", val_path, val.size());
  }
  return 0;
}

}  // namespace tessera::launch
