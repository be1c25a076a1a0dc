// The `tessera` command: train, prepare, generate, estimate, plot, launch, env. Every error is caught here, printed as one
// line, and turned into a non-zero exit.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <iostream>

#include "launch/commands.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/core/settings.h"
#include "runtime/engine/plot.h"
#include "tessera/config.h"

namespace tessera::launch {

int run_env() {
  std::cout << "tessera " << TESSERA_VERSION << " (cuda " << (TESSERA_WITH_CUDA ? "on" : "off")
            << ", mpi " << (TESSERA_WITH_MPI ? "on" : "off") << ")\n";
  for (const Setting& s : all_settings()) {
    std::cout << s.variable << "=" << setting_value(s.variable) << "  (default " << s.default_value
              << "): " << s.help << "\n";
  }
  return 0;
}

}  // namespace tessera::launch

int main(int argc, char** argv) {
  using namespace tessera::launch;
  CLI::App app{"tessera: train GPT-style models on one or many ranks"};
  app.require_subcommand(1);

  TrainOptions train;
  auto* train_cmd = app.add_subcommand("train", "train a model from a JSON config");
  train_cmd->add_option("--config,-c", train.config_path, "DeepSpeed-style JSON config")->required();
  train_cmd->add_option("--set", train.overrides, "override a config key: a.b=value (repeatable)");
  train_cmd->add_option("--sim-ranks", train.sim_ranks,
                        "run N data-parallel ranks as threads of this process");

  LaunchOptions launch;
  auto* launch_cmd = app.add_subcommand("launch", "start ranks through mpirun: tessera launch -n N -- CMD...");
  launch_cmd->add_option("-n,--num-ranks", launch.ranks, "number of ranks")->required();
  launch_cmd->add_option("--hostfile", launch.hostfile, "DeepSpeed-style hostfile (host slots=N)");
  launch_cmd->add_option("--include", launch.include, "hosts to use, e.g. host1@host2:0,1");
  launch_cmd->add_option("--exclude", launch.exclude, "hosts (or slots) to leave out");
  launch_cmd->add_option("--mpirun", launch.mpirun, "the mpirun to call")->capture_default_str();
  launch_cmd->add_flag("--dry-run", launch.dry_run, "print the mpirun command only");
  launch_cmd->add_option("command", launch.command, "the command each rank runs (after --)")
      ->required();

  PrepareOptions prepare;
  auto* prepare_cmd = app.add_subcommand("prepare", "tokenise a text file into train/val token files");
  prepare_cmd->add_option("--input,-i", prepare.input, "text file")->required();
  prepare_cmd->add_option("--out-dir,-o", prepare.out_dir, "output folder")->capture_default_str();
  prepare_cmd->add_option("--name", prepare.name, "output prefix (default: the input's stem)");
  prepare_cmd->add_option("--val-fraction", prepare.val_fraction, "share of the text kept for validation")
      ->capture_default_str();

  GenerateOptions gen;
  auto* gen_cmd = app.add_subcommand("generate", "sample text from trained weights");
  gen_cmd->add_option("--weights,-w", gen.weights, "model.safetensors (config.json beside it)")
      ->required();
  gen_cmd->add_option("--prompt,-p", gen.prompt, "text to continue");
  gen_cmd->add_option("--max-new-tokens,-n", gen.max_new_tokens, "tokens to generate")
      ->capture_default_str();
  gen_cmd->add_option("--temperature,-t", gen.temperature, "0 = greedy")->capture_default_str();
  gen_cmd->add_option("--top-k,-k", gen.top_k, "sample among the k likeliest (0 = all)")
      ->capture_default_str();
  gen_cmd->add_option("--seed,-s", gen.seed, "sampling seed")->capture_default_str();

  EstimateOptions est;
  auto* est_cmd = app.add_subcommand("estimate", "per-rank memory of a model at a ZeRO stage");
  est_cmd->add_option("--model", est.model, "model preset (gpt2-124M, ...)");
  est_cmd->add_option("--params", est.params, "parameter count (formula only)");
  est_cmd->add_option("--stage", est.stage, "ZeRO stage 0-3")->capture_default_str();
  est_cmd->add_option("--ranks", est.ranks, "data-parallel ranks")->capture_default_str();
  est_cmd->add_option("--dtype", est.dtype, "f32, bf16 or f16")->capture_default_str();
  est_cmd->add_option("--offload", est.offload, "none, cpu or nvme (where optimizer states go)")
      ->capture_default_str();
  est_cmd->add_option("--batch", est.batch, "micro-batch size: adds activations");
  est_cmd->add_option("--seq", est.seq, "sequence length (default: block size)");
  est_cmd->add_option("--reduce-bucket-size", est.reduce_bucket_size, "elements per bucket")
      ->capture_default_str();

  std::string plot_run_dir, plot_out;
  int plot_width = tessera::engine::kDefaultPlotWidth;
  int plot_height = tessera::engine::kDefaultPlotHeight;
  auto* plot_cmd =
      app.add_subcommand("plot", "draw a run's loss curves from its metrics.jsonl as a PNG");
  plot_cmd->add_option("run_dir", plot_run_dir, "the run's output.dir")->required();
  plot_cmd->add_option("--out,-o", plot_out, "PNG to write (default: RUN_DIR/loss.png)");
  plot_cmd->add_option("--width", plot_width, "pixels")->capture_default_str();
  plot_cmd->add_option("--height", plot_height, "pixels")->capture_default_str();

  auto* env_cmd = app.add_subcommand("env", "list the environment settings and build options");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    // Usage mistakes get the same one-line shape as every other error.
    std::cerr << "error: " << e.what() << " (see `tessera --help` or `tessera <command> --help`)"
              << std::endl;
    return 2;
  }
  try {
    tessera::init_logging();
    if (*train_cmd) return run_train(train);
    if (*prepare_cmd) return run_prepare(prepare);
    if (*env_cmd) return run_env();
    if (*launch_cmd) return run_launch(launch);
    if (*gen_cmd) return run_generate(gen);
    if (*est_cmd) return run_estimate(est);
    if (*plot_cmd) return tessera::engine::run_plot(plot_run_dir, plot_out, plot_width, plot_height);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::cerr << "error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
