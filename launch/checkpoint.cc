// `tessera checkpoint inspect | verify | export`: a training checkpoint (docs/CHECKPOINTS.md)
// read for a person. inspect prints the manifest (or, with --json, is the manifest), verify
// reads every piece against its CRC-32C and checks that the pieces tile every tensor, export
// assembles the master weights into the Hugging Face GPT-2 safetensors `tessera generate`
// and transformers load. Any layout's checkpoint works: the reader maps its pieces onto the
// one-rank registry.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <vector>

#include <fmt/format.h>

#include "launch/commands.h"
#include "models/gpt.h"
#include "models/weights_io.h"
#include "runtime/core/error.h"
#include "runtime/core/memory_stats.h"
#include "runtime/core/storage.h"
#include "runtime/engine/checkpoint_io.h"

namespace tessera::launch {
namespace fs = std::filesystem;
using engine::Manifest;
using engine::TensorKind;

namespace {

constexpr TensorKind kKinds[] = {TensorKind::Master, TensorKind::ExpAvg, TensorKind::ExpAvgSq,
                                 TensorKind::Working};

// The step folder DIR names: itself, or a checkpoint root's latest.
std::string checkpoint_folder(const std::string& dir) {
  TS_CHECK(!dir.empty(), "checkpoint: name a step folder or a checkpoint.dir");
  const std::string folder = engine::resolve_checkpoint(dir);
  TS_CHECK(!folder.empty(),
           "'{}' holds neither {} nor a '{}' pointer: no checkpoint was completed there; pass a "
           "step folder (step-NNNNNNNN) or the checkpoint.dir of a run that saved one",
           dir, engine::kManifestFile, engine::kLatestFile);
  return folder;
}

std::string read_manifest_text(const std::string& folder) {
  const fs::path path = fs::path(folder) / engine::kManifestFile;
  std::ifstream in(path, std::ios::binary);
  TS_CHECK(in.good(), "checkpoint: cannot read '{}'", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string on_off(bool b) { return b ? "on" : "off"; }

void print_manifest(const std::string& folder, const Manifest& m) {
  const models::GPTConfig& g = m.model;
  const engine::CheckpointLayout& l = m.layout;
  const engine::TrainingProgress& p = m.progress;
  std::cout << fmt::format("checkpoint {}\n", folder);
  std::cout << fmt::format("format: {} version {}\n", engine::kCheckpointFormatName, m.version);
  std::cout << fmt::format(
      "model: {} layers, {} heads, n_embd {}, vocab {}, block {} ({} parameters)\n", g.n_layer,
      g.n_head, g.n_embd, g.vocab_size, g.block_size, g.num_params());
  std::cout << fmt::format(
      "layout: world {} = dp {} x tp {} x pp {} (virtual pp {}), ZeRO stage {}, "
      "sequence parallel {}, precision {}\n",
      l.world, l.dp, l.tp, l.pp, l.virtual_pp, l.zero_stage, on_off(l.sequence_parallel),
      dtype_name(l.precision));
  std::cout << fmt::format("progress: step {}, optimizer steps {}, lr {:g}\n", p.step,
                           p.optimizer_steps, p.lr);
  if (p.loss_scaler) {
    const engine::LossScaler::State& s = *p.loss_scaler;
    std::cout << fmt::format(
        "loss scaler: scale {:g}, hysteresis left {}, iteration {}, "
        "last overflow at {}, {} skipped steps, {} overflows\n",
        s.scale, s.hysteresis_left, s.iteration, s.last_overflow_iteration, s.skipped_steps,
        s.overflow_count);
  } else {
    std::cout << "loss scaler: none\n";
  }
  std::cout << fmt::format(
      "data: {} micro-batches consumed, micro-batch {} x {} tokens, "
      "shuffle {}, order seed {}; run seed {}\n",
      p.consumed_micro_batches, p.micro_batch_size, p.seq_len, on_off(p.shuffle), p.data_seed,
      p.seed);

  std::map<std::string, std::pair<int64_t, uint64_t>> per_file;  // pieces, bytes
  for (const engine::SavedPiece& s : m.pieces) {
    per_file[s.file].first += 1;
    per_file[s.file].second += s.bytes;
  }
  std::cout << "files:\n";
  const fs::path manifest = fs::path(folder) / engine::kManifestFile;
  std::cout << fmt::format("  {:<16} {:>10}\n", engine::kManifestFile,
                           format_bytes(static_cast<int64_t>(fs::file_size(manifest))));
  for (const std::string& f : m.files) {
    const fs::path path = fs::path(folder) / f;
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    const auto& [pieces, bytes] = per_file[f];
    std::cout << fmt::format("  {:<16} {:>10}  {} pieces, {} of data{}\n", f,
                             ec ? std::string("MISSING") : format_bytes(static_cast<int64_t>(size)),
                             pieces, format_bytes(static_cast<int64_t>(bytes)),
                             ec ? "" : (size < bytes ? " (TRUNCATED)" : ""));
  }

  std::vector<TensorKind> kinds;
  for (TensorKind k : kKinds) {
    if (std::any_of(m.pieces.begin(), m.pieces.end(),
                    [&](const engine::SavedPiece& s) { return s.kind == k; })) {
      kinds.push_back(k);
    }
  }
  std::map<std::pair<std::string, TensorKind>, std::pair<int64_t, uint64_t>> per_tensor;
  std::map<TensorKind, std::pair<int64_t, uint64_t>> totals;
  for (const engine::SavedPiece& s : m.pieces) {
    auto& t = per_tensor[{s.tensor, s.kind}];
    t.first += 1;
    t.second += s.bytes;
    totals[s.kind].first += 1;
    totals[s.kind].second += s.bytes;
  }
  size_t name_width = 6;
  for (const engine::SavedTensor& t : m.tensors) name_width = std::max(name_width, t.name.size());
  const auto cell = [](const std::pair<int64_t, uint64_t>& c) {
    return fmt::format("{} / {}", c.first, format_bytes(static_cast<int64_t>(c.second)));
  };
  std::cout << fmt::format("tensors: {} (per kind: pieces / bytes)\n", m.tensors.size());
  std::string header = fmt::format("  {:<{}} {:<14}", "name", name_width, "shape");
  for (TensorKind k : kinds) header += fmt::format(" {:>18}", engine::tensor_kind_name(k));
  std::cout << header << "\n";
  for (const engine::SavedTensor& t : m.tensors) {
    std::string row = fmt::format("  {:<{}} {:<14}", t.name, name_width, shape_str(t.shape));
    for (TensorKind k : kinds) {
      const auto it = per_tensor.find({t.name, k});
      row += fmt::format(" {:>18}", it == per_tensor.end() ? std::string("-") : cell(it->second));
    }
    std::cout << row << "\n";
  }
  std::string total = fmt::format("  {:<{}} {:<14}", "total", name_width, "");
  for (TensorKind k : kinds) total += fmt::format(" {:>18}", cell(totals[k]));
  std::cout << total << "\n";
  std::cout << fmt::format("{} pieces, {} in all\n", m.pieces.size(),
                           format_bytes(static_cast<int64_t>(m.total_bytes())));
}

}  // namespace

int run_checkpoint_inspect(const CheckpointOptions& opts) {
  const std::string folder = checkpoint_folder(opts.dir);
  const std::string text = read_manifest_text(folder);
  if (opts.json) {
    std::cout << text;
    if (!text.empty() && text.back() != '\n') std::cout << "\n";
    return 0;
  }
  // The manifest alone: a checkpoint with a missing shard can still be looked at.
  const std::string source = (fs::path(folder) / engine::kManifestFile).string();
  print_manifest(folder, engine::manifest_from_json(text, source));
  return 0;
}

int run_checkpoint_verify(const CheckpointOptions& opts) {
  const std::string folder = checkpoint_folder(opts.dir);
  engine::CheckpointReader reader(folder);
  const size_t pieces = reader.verify();
  std::cout << fmt::format("checkpoint {} (step {})\n", folder, reader.manifest().progress.step);
  std::cout << fmt::format(
      "ok: {} pieces, {:.2f} MiB, every CRC-32C matches and every tensor is covered\n", pieces,
      static_cast<double>(reader.manifest().total_bytes()) / (1 << 20));
  return 0;
}

int run_checkpoint_export(const CheckpointOptions& opts) {
  TS_CHECK(!opts.out.empty(), "checkpoint export: --out names the safetensors file to write");
  const DType dtype = parse_dtype(opts.dtype);
  TS_CHECK(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
           "checkpoint export: --dtype {} is not f32, bf16 or f16", opts.dtype);
  const std::string folder = checkpoint_folder(opts.dir);
  engine::CheckpointReader reader(folder);
  const Manifest& m = reader.manifest();
  TS_CHECK(reader.has(TensorKind::Master),
           "checkpoint '{}' holds no master weights: it cannot be exported", folder);
  m.model.validate();
  // The one-rank registry the pieces are in, whatever layout wrote them.
  const ParamRegistry registry = models::build_gpt_registry(m.model);
  Storage flat(static_cast<size_t>(registry.numel()) * sizeof(float), MemCategory::Params,
               Device::cpu(), /*zero=*/false);
  auto* weights = static_cast<float*>(flat.data());
  reader.read(TensorKind::Master, registry, 0, registry.numel(), weights);
  const fs::path out(opts.out);
  if (out.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(out.parent_path(), ec);
    TS_CHECK(!ec, "checkpoint export: cannot create '{}': {}: check --out",
             out.parent_path().string(), ec.message());
  }
  models::save_gpt_safetensors(opts.out, m.model, registry, weights, dtype);
  std::cout << fmt::format(
      "exported the master weights of step {} ({} parameters, {}) from "
      "{} to {} (and config.json beside it)\n",
      m.progress.step, registry.numel(), dtype_name(dtype), folder, opts.out);
  return 0;
}

}  // namespace tessera::launch
