// Interop helper for hf_gpt2_logits.py: builds a small GPT-2 in tessera, saves it with
// save_gpt_safetensors (f32, f16, bf16, each in its own HF-style directory), runs tessera's
// forward on fixed tokens and writes the logits, so the script can load the same weights in
// transformers and compare.
//
// Usage: interop_dump_logits OUT_DIR
//   Writes OUT_DIR/{f32,f16,bf16}/{model.safetensors,config.json}, OUT_DIR/tokens.i32 (B*T
//   int32), OUT_DIR/logits.f32 (B*T*V float32, row-major [B, T, V]), OUT_DIR/params.f32 (the
//   flat parameter buffer) and OUT_DIR/shape.txt ("B T V").
// Usage: interop_dump_logits --load HF_DIR OUT_FILE
//   The other direction: reads HF_DIR/config.json and HF_DIR/model.safetensors (as written
//   by transformers' save_pretrained) and writes tessera's flat parameter buffer to OUT_FILE.
// Usage: interop_dump_logits --logits RUN_DIR OUT_DIR
//   Tessera's logits of a saved model (RUN_DIR/config.json and model.safetensors, e.g. a
//   tensor-parallel run's output), one rank, on the fixed tokens: OUT_DIR/tokens.i32,
//   logits.f32 and shape.txt as above.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "models/gpt.h"
#include "models/weights_io.h"

namespace {

constexpr float kWeightScale = 5.0f;

template <typename T>
void write_binary(const std::filesystem::path& path, const std::vector<T>& values) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(values.data()),
            static_cast<std::streamsize>(values.size() * sizeof(T)));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

// The model's logits on fixed tokens, B = 2 rows of block_size: tokens.i32, logits.f32 and
// shape.txt in out_dir.
void write_logits(const tessera::models::GPTConfig& config, tessera::models::GPT<float>& model,
                  std::vector<float>& flat, const std::filesystem::path& out_dir) {
  using namespace tessera;
  const int B = 2, T = config.block_size, V = config.vocab_size;
  std::vector<int32_t> tokens(static_cast<size_t>(B * T));
  uint32_t state = 12345;
  for (int32_t& t : tokens) {
    state = state * 1664525u + 1013904223u;  // an LCG: any fixed spread of ids will do
    t = static_cast<int32_t>((state >> 8) % static_cast<uint32_t>(V));
  }
  std::vector<float> grads(flat.size());
  LocalParamAccess access(model.registry(), flat.data(), grads.data(), sizeof(float));
  model.allocate_activations(B, T);
  model.forward(access, tokens.data(), nullptr, B, T);
  std::vector<float> logits(static_cast<size_t>(B) * T * V);
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < T; ++t)
      model.logits_at(access, b, t, logits.data() + (int64_t{b} * T + t) * V);
  }

  write_binary(out_dir / "tokens.i32", tokens);
  write_binary(out_dir / "logits.f32", logits);
  std::ofstream(out_dir / "shape.txt") << B << " " << T << " " << V << "\n";
}

int run(const std::filesystem::path& out_dir) {
  using namespace tessera;
  using namespace tessera::models;
  // n_layer 2, n_head 2, n_embd 32, vocab 256, block 32 (the "nano" preset's shape).
  const GPTConfig config{2, 2, 32, 256, 32};

  GPT<float> model(config);
  std::vector<float> flat(static_cast<size_t>(model.registry().numel()));
  init_params(model.registry(), flat.data(), /*seed=*/1234);
  // GPT-2 init leaves every bias at 0 and every LayerNorm at 1/0, which would let a bias or
  // LayerNorm tensor loaded into the wrong place go unnoticed: perturb them,
  // deterministically. And at std 0.02 a tiny model's attention is nearly uniform, so even
  // swapped Q and K blocks would move the logits by less than 1e-3: scale the weight
  // matrices up to make every mapping error stand far above the 1e-4 tolerance.
  for (const ParamSpec& spec : model.registry().params()) {
    for (int64_t i = 0; i < spec.numel(); ++i) {
      float& v = flat[spec.offset + i];
      if (spec.init == ParamInit::Normal) {
        v *= kWeightScale;
      } else {
        v += 0.1f * static_cast<float>(std::sin(0.7 * (spec.offset + i) + 0.3));
      }
    }
  }

  for (const auto& [dtype, name] : {std::pair{DType::F32, "f32"}, std::pair{DType::F16, "f16"},
                                    std::pair{DType::BF16, "bf16"}}) {
    std::filesystem::create_directories(out_dir / name);
    save_gpt_safetensors((out_dir / name / "model.safetensors").string(), config, model.registry(),
                         flat.data(), dtype);
  }

  write_logits(config, model, flat, out_dir);
  write_binary(out_dir / "params.f32", flat);
  return 0;
}

int load(const std::filesystem::path& hf_dir, const std::filesystem::path& out_file) {
  using namespace tessera::models;
  const GPTConfig config = read_hf_config((hf_dir / "config.json").string());
  const tessera::ParamRegistry registry = build_gpt_registry(config);
  std::vector<float> flat(static_cast<size_t>(registry.numel()));
  load_gpt_safetensors((hf_dir / "model.safetensors").string(), config, registry, flat.data());
  write_binary(out_file, flat);
  return 0;
}

int logits_of(const std::filesystem::path& run_dir, const std::filesystem::path& out_dir) {
  using namespace tessera::models;
  const GPTConfig config = read_hf_config((run_dir / "config.json").string());
  GPT<float> model(config);
  std::vector<float> flat(static_cast<size_t>(model.registry().numel()));
  load_gpt_safetensors((run_dir / "model.safetensors").string(), config, model.registry(),
                       flat.data());
  std::filesystem::create_directories(out_dir);
  write_logits(config, model, flat, out_dir);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc == 4 ? argv[1] : "";
  if (argc != 2 && mode != "--load" && mode != "--logits") {
    std::fprintf(stderr, "usage: %s OUT_DIR | %s --load HF_DIR OUT_FILE | %s --logits RUN_DIR OUT_DIR\n",
                 argv[0], argv[0], argv[0]);
    return 2;
  }
  try {
    if (mode == "--load") return load(argv[2], argv[3]);
    if (mode == "--logits") return logits_of(argv[2], argv[3]);
    return run(argv[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "interop_dump_logits: %s\n", e.what());
    return 1;
  }
}
