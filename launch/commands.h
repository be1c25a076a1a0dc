// The `tessera` subcommands. Each returns the process exit code; errors are exceptions
// caught once in main().
#pragma once

#include <string>
#include <vector>

namespace tessera::launch {

struct PrepareOptions {
  std::string input;
  std::string out_dir = "data";
  std::string name;  // output prefix; default: the input's stem
  double val_fraction = 0.1;
};
int run_prepare(const PrepareOptions& opts);

struct TrainOptions {
  std::string config_path;
  std::vector<std::string> overrides;
};
int run_train(const TrainOptions& opts);

int run_env();

}  // namespace tessera::launch
