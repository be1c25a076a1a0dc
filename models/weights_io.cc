// GPT-2 <-> Hugging Face safetensors mapping. The byte format lives in safetensors.cc; this
// file owns the names, the Conv1D transposition, config.json, and the diagnosis of a
// checkpoint that does not fit the configured model.
#include "models/weights_io.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <vector>

#include "models/gpt.h"
#include "models/safetensors.h"
#include "runtime/core/error.h"

namespace tessera::models {

namespace {

constexpr std::string_view kPrefix = "transformer.";

// HF GPT-2 implements these as Conv1D (y = x W + b, W stored [in, out]); tessera computes
// y = x W^T + b with W stored [out, in].
bool is_conv1d_weight(const std::string& name) {
  for (std::string_view suffix :
       {".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"}) {
    if (name.ends_with(suffix)) return true;
  }
  return false;
}

Shape file_shape(const ParamSpec& spec) {
  if (is_conv1d_weight(spec.name)) return {spec.shape[1], spec.shape[0]};
  return spec.shape;
}

// dst[c][r] = src[r][c] for src [rows, cols].
void transpose(const float* src, int64_t rows, int64_t cols, float* dst) {
  // Blocked so both sides stay in cache for the 1600 x 6400 matrices of gpt2-1.5B.
  constexpr int64_t kBlock = 64;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
      const int64_t r1 = std::min(rows, r0 + kBlock), c1 = std::min(cols, c0 + kBlock);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) dst[c * rows + r] = src[r * cols + c];
      }
    }
  }
}

// The causal-mask buffers older transformers versions saved with the weights: h.N.attn.bias
// and h.N.attn.masked_bias. Not parameters; tessera builds the mask implicitly.
bool is_mask_buffer(const std::string& name) {
  if (!name.starts_with("h.")) return false;
  const size_t dot = name.find('.', 2);
  if (dot == std::string::npos || dot == 2) return false;
  for (size_t i = 2; i < dot; ++i) {
    if (name[i] < '0' || name[i] > '9') return false;
  }
  const std::string_view rest = std::string_view(name).substr(dot);
  return rest == ".attn.bias" || rest == ".attn.masked_bias";
}

std::string strip_prefix(const std::string& name) {
  return name.starts_with(kPrefix) ? name.substr(kPrefix.size()) : name;
}

// The registry must be the one build_gpt_registry(config) makes, else offsets are wrong.
void check_registry(const GPTConfig& config, const ParamRegistry& registry) {
  const ParamRegistry expected = build_gpt_registry(config);
  bool same = expected.params().size() == registry.params().size();
  for (size_t i = 0; same && i < expected.params().size(); ++i) {
    const ParamSpec &a = expected.params()[i], &b = registry.params()[i];
    same = a.name == b.name && a.shape == b.shape && a.offset == b.offset;
  }
  TS_CHECK(same,
           "GPT weights I/O: the parameter registry does not match the config (n_layer {}, n_embd "
           "{}, vocab_size {}, block_size {}): pass the registry built from this config",
           config.n_layer, config.n_embd, config.vocab_size, config.block_size);
}

// Dimensions read off a file's tensor shapes, to explain a mismatch in the user's terms.
struct FileDims {
  std::optional<int64_t> n_layer, n_embd, vocab_size, block_size;
};

FileDims infer_dims(const SafetensorsFile& file) {
  FileDims dims;
  int64_t max_layer = -1;
  for (const SafetensorsTensor& t : file.tensors()) {
    const std::string name = strip_prefix(t.name);
    if (name == "wte.weight" && t.shape.size() == 2) {
      dims.vocab_size = t.shape[0];
      dims.n_embd = t.shape[1];
    } else if (name == "wpe.weight" && t.shape.size() == 2) {
      dims.block_size = t.shape[0];
    } else if (name.starts_with("h.")) {
      const size_t dot = name.find('.', 2);
      if (dot == std::string::npos) continue;
      try {
        max_layer = std::max<int64_t>(max_layer, std::stoll(name.substr(2, dot - 2)));
      } catch (const std::exception&) {
      }
    }
  }
  if (max_layer >= 0) dims.n_layer = max_layer + 1;
  return dims;
}

// "the file looks like gpt2-350M (n_layer 24, n_embd 1024, ...) but the config says n_embd
// 768": the likely cause of a missing tensor or a wrong shape.
std::string likely_cause(const FileDims& dims, const GPTConfig& config) {
  std::vector<std::string> diffs;
  auto compare = [&](const char* field, const std::optional<int64_t>& found, int64_t want) {
    if (found && *found != want)
      diffs.push_back(fmt::format("{} {} (file) vs {} (config)", field, *found, want));
  };
  compare("n_layer", dims.n_layer, config.n_layer);
  compare("n_embd", dims.n_embd, config.n_embd);
  compare("vocab_size", dims.vocab_size, config.vocab_size);
  compare("block_size", dims.block_size, config.block_size);
  if (diffs.empty()) {
    return "the file's model dimensions match the config, so the file was likely written for "
           "another model layout; re-export it with Hugging Face GPT-2 names and layouts";
  }
  std::string looks_like = "the file's";
  for (const std::string& preset : gpt_preset_names()) {
    const GPTConfig p = gpt_preset(preset);
    if (dims.n_layer == p.n_layer && dims.n_embd == p.n_embd) {
      looks_like = fmt::format("the file looks like a {} checkpoint, whose", preset);
    }
  }
  std::string text =
      fmt::format("{} dimensions differ from the config: {}", looks_like, fmt::join(diffs, ", "));
  if (dims.vocab_size && *dims.vocab_size < config.vocab_size && diffs.size() == 1) {
    text += fmt::format(
        "; the config's vocab_size {} looks padded: set model.vocab_size to the "
        "checkpoint's {}",
        config.vocab_size, *dims.vocab_size);
  } else {
    text += "; set the model config to the checkpoint's dimensions (or load its config.json)";
  }
  return text;
}

void write_hf_config(const std::filesystem::path& file, const GPTConfig& config, DType dtype) {
  const char* torch_dtype = dtype == DType::F16    ? "float16"
                            : dtype == DType::BF16 ? "bfloat16"
                                                   : "float32";
  // Every field that changes GPT2LMHeadModel's arithmetic is spelled out rather than left to
  // the defaults of whichever transformers version reads the file; dropout is 0 because
  // tessera trains without it, so eval and train modes agree.
  nlohmann::ordered_json j;
  j["architectures"] = {"GPT2LMHeadModel"};
  j["model_type"] = "gpt2";
  j["vocab_size"] = config.vocab_size;
  j["n_positions"] = config.block_size;
  j["n_ctx"] = config.block_size;
  j["n_embd"] = config.n_embd;
  j["n_layer"] = config.n_layer;
  j["n_head"] = config.n_head;
  j["n_inner"] = nullptr;  // 4 * n_embd
  j["activation_function"] = "gelu_new";
  j["resid_pdrop"] = 0.0;
  j["embd_pdrop"] = 0.0;
  j["attn_pdrop"] = 0.0;
  j["layer_norm_epsilon"] = 1e-5;
  j["initializer_range"] = 0.02;
  j["scale_attn_weights"] = true;
  j["scale_attn_by_inverse_layer_idx"] = false;
  j["reorder_and_upcast_attn"] = false;
  j["add_cross_attention"] = false;
  j["tie_word_embeddings"] = true;
  j["use_cache"] = true;
  // GPT-2's <|endoftext|>. A smaller vocabulary has no such token: null, because
  // GPT2Config's default (50256) would point outside it and transformers warns about that.
  if (config.vocab_size > 50256) {
    j["bos_token_id"] = 50256;
    j["eos_token_id"] = 50256;
  } else {
    j["bos_token_id"] = nullptr;
    j["eos_token_id"] = nullptr;
  }
  j["torch_dtype"] = torch_dtype;
  std::ofstream out(file);
  out << j.dump(2) << "\n";
  out.close();
  TS_CHECK(out.good(), "save weights: cannot write {}: check the directory is writable",
           file.string());
}

}  // namespace

void save_gpt_safetensors(const std::string& path, const GPTConfig& config,
                          const ParamRegistry& registry, const float* flat, DType dtype) {
  TS_CHECK(flat != nullptr, "save weights {}: null parameter buffer", path);
  save_gpt_safetensors(
      path, config, registry,
      [flat](int64_t begin, int64_t end, float* out) { std::copy(flat + begin, flat + end, out); },
      dtype);
}

void save_gpt_safetensors(const std::string& path, const GPTConfig& config,
                          const ParamRegistry& registry, const FlatReader& read, DType dtype) {
  config.validate();
  check_registry(config, registry);
  TS_CHECK(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16,
           "save weights {}: dtype {} is not supported: use f32, f16 or bf16", path,
           dtype_name(dtype));
  std::vector<SafetensorsEntry> entries;
  for (const ParamSpec& spec : registry.params()) {
    SafetensorsEntry e;
    e.name = spec.name;
    e.dtype = dtype;
    e.shape = file_shape(spec);
    const int64_t begin = spec.offset, n = spec.numel();
    const bool conv1d = is_conv1d_weight(spec.name);
    const int64_t rows = conv1d ? spec.shape[0] : 0, cols = conv1d ? spec.shape[1] : 0;
    // At most one fp32 copy of a tensor beside the writer's staging buffer (none in f32
    // when no transpose is needed): the word embedding of a 2.7B model is 0.5 GB in fp32.
    e.fill = [&read, begin, n, conv1d, rows, cols, dtype](std::byte* out) {
      if (conv1d) {
        std::vector<float> t(static_cast<size_t>(n));
        read(begin, begin + n, t.data());
        if (dtype == DType::F32) {
          transpose(t.data(), rows, cols, reinterpret_cast<float*>(out));
          return;
        }
        std::vector<float> transposed(static_cast<size_t>(n));
        transpose(t.data(), rows, cols, transposed.data());
        encode_floats(transposed.data(), n, dtype, out);
      } else if (dtype == DType::F32) {
        read(begin, begin + n, reinterpret_cast<float*>(out));
      } else {
        constexpr int64_t kChunk = 1 << 20;
        std::vector<float> t(static_cast<size_t>(std::min(n, kChunk)));
        for (int64_t at = 0; at < n; at += kChunk) {
          const int64_t m = std::min(kChunk, n - at);
          read(begin + at, begin + at + m, t.data());
          encode_floats(t.data(), m, dtype, out + at * static_cast<int64_t>(dtype_size(dtype)));
        }
      }
    };
    entries.push_back(std::move(e));
  }
  // transformers refuses a safetensors file whose metadata lacks format "pt" (or tf, flax).
  write_safetensors(path, entries, {{"format", "pt"}});
  write_hf_config(std::filesystem::path(path).parent_path() / "config.json", config, dtype);
}

namespace {

// A checked file: each parameter with its tensor, and the tied head if the file has one.
struct LoadPlan {
  std::vector<std::pair<const ParamSpec*, const SafetensorsTensor*>> tensors;
  const SafetensorsTensor* lm_head = nullptr;
};

// Everything a load can reject, checked from the header alone (no tensor data is read), so a
// rejected file leaves the output intact and every rank reading any slice sees the same error.
LoadPlan plan_load(const std::string& path, const GPTConfig& config, const ParamRegistry& registry,
                   const SafetensorsFile& file) {
  const FileDims dims = infer_dims(file);
  std::map<std::string, const SafetensorsTensor*> by_name;
  LoadPlan plan;
  for (const SafetensorsTensor& t : file.tensors()) {
    const std::string name = strip_prefix(t.name);
    if (is_mask_buffer(name)) continue;
    if (name == "lm_head.weight") {
      plan.lm_head = &t;
      continue;
    }
    const auto [it, inserted] = by_name.emplace(name, &t);
    TS_CHECK(inserted,
             "load weights {}: tensor '{}' appears both as '{}' and '{}': keep one copy, with or "
             "without the 'transformer.' prefix",
             path, name, it->second->name, t.name);
  }
  for (const ParamSpec& spec : registry.params()) {
    const auto it = by_name.find(spec.name);
    TS_CHECK(it != by_name.end(),
             "load weights {}: missing tensor '{}' (expected shape {}); likely cause: {}", path,
             spec.name, shape_str(file_shape(spec)), likely_cause(dims, config));
    const SafetensorsTensor& t = *it->second;
    const Shape want = file_shape(spec);
    if (t.shape != want) {
      std::string cause = likely_cause(dims, config);
      if (is_conv1d_weight(spec.name) && t.shape == spec.shape && want != spec.shape) {
        cause =
            "the shape is the transpose of Hugging Face's Conv1D layout [in, out]: the file "
            "stores this weight [out, in] (an nn.Linear export?); transpose it when exporting";
      }
      TS_THROW(InvalidArgument,
               "load weights {}: tensor '{}' has shape {} but the config needs {}{}; likely "
               "cause: {}",
               path, t.name, shape_str(t.shape), shape_str(want),
               is_conv1d_weight(spec.name) ? " (HF Conv1D layout [in, out])" : "", cause);
    }
    plan.tensors.emplace_back(&spec, &t);
    by_name.erase(it);
  }
  if (!by_name.empty()) {
    const SafetensorsTensor& extra = *by_name.begin()->second;
    TS_THROW(
        InvalidArgument,
        "load weights {}: unexpected tensor '{}' (shape {}), not a parameter of the configured "
        "model ({} unexpected in all); likely cause: {}",
        path, extra.name, shape_str(extra.shape), by_name.size(), likely_cause(dims, config));
  }
  if (plan.lm_head != nullptr) {
    const ParamSpec& wte = registry.find("wte.weight");
    TS_CHECK(
        plan.lm_head->shape == wte.shape,
        "load weights {}: tensor '{}' has shape {} but tessera ties the head to wte.weight {}; "
        "drop lm_head.weight from the file",
        path, plan.lm_head->name, shape_str(plan.lm_head->shape), shape_str(wte.shape));
  }
  return plan;
}

// Elements [a, b) of tessera's [rows, cols] layout of a Conv1D weight whose file tensor is
// [cols, rows], into dst[0, b - a). Only the tessera rows the slice touches are read: for
// each file row, the contiguous run of those rows' columns.
void read_conv1d_slice(const SafetensorsTensor& t, int64_t rows, int64_t cols, int64_t a, int64_t b,
                       float* dst) {
  const int64_t r0 = a / cols, r1 = (b - 1) / cols + 1, nr = r1 - r0;
  const size_t esize = dtype_size(t.dtype);
  std::vector<float> file_part(static_cast<size_t>(cols * nr));  // [cols, nr]
  for (int64_t c = 0; c < cols; ++c) {
    decode_floats(t.data + (c * rows + r0) * static_cast<int64_t>(esize), nr, t.dtype,
                  file_part.data() + c * nr);
  }
  if (a == r0 * cols && b == r1 * cols) {
    transpose(file_part.data(), cols, nr, dst);  // whole rows: straight into place
    return;
  }
  std::vector<float> tile(static_cast<size_t>(nr * cols));  // rows [r0, r1), tessera layout
  transpose(file_part.data(), cols, nr, tile.data());
  std::memcpy(dst, tile.data() + (a - r0 * cols), static_cast<size_t>(b - a) * sizeof(float));
}

}  // namespace

namespace {

// A registry laid out otherwise than the one-rank model's: tensor-parallel parts, or a
// pipeline rank's parameters (some of the model's, and the head's copy of wte).
bool mapped(const ParamRegistry& registry) {
  const std::vector<ParamSpec>& params = registry.params();
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].tp.split() ||
        (params[i].init_id >= 0 && params[i].init_id != static_cast<int>(i))) {
      return true;
    }
  }
  return false;
}

// Such a rank's part of the file: each parameter read as the one-rank model lays it out (its
// init_id names it there; a head copy reads wte), and, when split, this rank's elements
// picked; padding is zero.
void load_mapped_range(const std::string& path, const GPTConfig& config,
                       const ParamRegistry& registry, int64_t begin, int64_t end, float* out) {
  const ParamRegistry whole = build_gpt_registry(config);
  std::vector<float> tensor;
  for (size_t i = 0; i < registry.params().size(); ++i) {
    const ParamSpec& spec = registry.params()[i];
    const size_t id = spec.init_id >= 0 ? static_cast<size_t>(spec.init_id) : i;
    TS_CHECK(id < whole.params().size(),
             "load weights {}: parameter '{}' is not one of the model's {}", path, spec.name,
             whole.params().size());
    const ParamSpec& w = whole.params()[id];
    const int64_t a = std::max<int64_t>(begin - spec.offset, 0);
    const int64_t b = std::min<int64_t>(end - spec.offset, spec.numel());
    if (a >= b) continue;
    float* dst = out + (spec.offset + a - begin);
    if (!spec.tp.split()) {
      load_gpt_safetensors_range(path, config, whole, w.offset + a, w.offset + b, dst);
      continue;
    }
    tensor.resize(static_cast<size_t>(w.numel()));
    load_gpt_safetensors_range(path, config, whole, w.offset, w.offset + w.numel(), tensor.data());
    for (int64_t j = a; j < b; ++j) {
      const int64_t at = spec.whole_index(j);
      dst[j - a] = at >= 0 ? tensor[static_cast<size_t>(at)] : 0.0f;
    }
  }
}

}  // namespace

void load_gpt_safetensors_range(const std::string& path, const GPTConfig& config,
                                const ParamRegistry& registry, int64_t begin, int64_t end,
                                float* out) {
  config.validate();
  if (mapped(registry)) {
    TS_CHECK(0 <= begin && begin <= end && end <= registry.numel(),
             "load weights {}: [{}, {}) is not a range of the model's {} parameters", path, begin,
             end, registry.numel());
    load_mapped_range(path, config, registry, begin, end, out);
    return;
  }
  check_registry(config, registry);
  TS_CHECK(0 <= begin && begin <= end && end <= registry.numel(),
           "load weights {}: [{}, {}) is not a range of the model's {} parameters", path, begin,
           end, registry.numel());
  TS_CHECK(out != nullptr || begin == end, "load weights {}: null parameter buffer", path);
  const SafetensorsFile file(path);
  const LoadPlan plan = plan_load(path, config, registry, file);

  for (const auto& [spec, t] : plan.tensors) {
    // The parameter's elements [a, b) inside the slice.
    const int64_t a = std::max<int64_t>(begin - spec->offset, 0);
    const int64_t b = std::min<int64_t>(end - spec->offset, spec->numel());
    if (a >= b) continue;
    float* dst = out + (spec->offset + a - begin);
    if (is_conv1d_weight(spec->name)) {
      read_conv1d_slice(*t, spec->shape[0], spec->shape[1], a, b, dst);
    } else {
      decode_floats(t->data + a * static_cast<int64_t>(dtype_size(t->dtype)), b - a, t->dtype, dst);
    }
  }

  if (plan.lm_head != nullptr) {
    // Checked after loading wte so both go through the same conversion, and over the slice's
    // part of wte only (ranks that load the whole model between them check all of it).
    // Bitwise: a head that differs at all would make tessera's logits differ from the
    // checkpoint's.
    const ParamSpec& wte = registry.find("wte.weight");
    const int64_t a = std::max<int64_t>(begin - wte.offset, 0);
    const int64_t b = std::min<int64_t>(end - wte.offset, wte.numel());
    constexpr int64_t kChunk = int64_t{1} << 16;
    std::vector<float> head(static_cast<size_t>(std::min(kChunk, std::max<int64_t>(b - a, 0))));
    const size_t esize = dtype_size(plan.lm_head->dtype);
    for (int64_t at = a; at < b; at += kChunk) {
      const int64_t n = std::min(kChunk, b - at);
      decode_floats(plan.lm_head->data + at * static_cast<int64_t>(esize), n, plan.lm_head->dtype,
                    head.data());
      TS_CHECK(std::memcmp(head.data(), out + (wte.offset + at - begin),
                           static_cast<size_t>(n) * sizeof(float)) == 0,
               "load weights {}: '{}' differs from wte.weight, but tessera always ties the "
               "output head to the token embedding: this untied checkpoint cannot be "
               "represented; use a GPT-2 checkpoint with tied embeddings",
               path, plan.lm_head->name);
    }
  }
}

void load_gpt_safetensors(const std::string& path, const GPTConfig& config,
                          const ParamRegistry& registry, float* flat) {
  TS_CHECK(flat != nullptr, "load weights {}: null parameter buffer", path);
  load_gpt_safetensors_range(path, config, registry, 0, registry.numel(), flat);
}

GPTConfig read_hf_config(const std::string& config_json_path) {
  const std::string& path = config_json_path;
  std::ifstream in(path);
  TS_CHECK(in.good(), "HF config {}: cannot open; check the path", path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    TS_THROW(InvalidArgument, "HF config {}: not valid JSON ({}); fix or re-download it", path,
             e.what());
  }
  TS_CHECK(j.is_object(), "HF config {}: expected a JSON object, found {}", path, j.type_name());
  if (j.contains("model_type")) {
    TS_CHECK(j["model_type"] == "gpt2",
             "HF config {}: model_type is {}, but tessera loads only GPT-2 (model_type \"gpt2\")",
             path, j["model_type"].dump());
  }
  auto get_int = [&](const char* key) -> std::optional<int> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    TS_CHECK(j[key].is_number_integer(), "HF config {}: {} must be an integer, found {}", path, key,
             j[key].dump());
    return j[key].get<int>();
  };
  auto require_int = [&](const char* key) {
    const std::optional<int> v = get_int(key);
    TS_CHECK(v.has_value(),
             "HF config {}: missing {}; a GPT-2 config.json names n_layer, n_head, "
             "n_embd, vocab_size and n_positions",
             path, key);
    return *v;
  };
  GPTConfig config;
  config.n_layer = require_int("n_layer");
  config.n_head = require_int("n_head");
  config.n_embd = require_int("n_embd");
  config.vocab_size = require_int("vocab_size");
  // n_positions sizes the position embedding; n_ctx is its older alias.
  const std::optional<int> n_positions = get_int("n_positions");
  const std::optional<int> n_ctx = get_int("n_ctx");
  TS_CHECK(n_positions || n_ctx, "HF config {}: missing n_positions (the block size)", path);
  config.block_size = n_positions ? *n_positions : *n_ctx;

  // Settings whose non-default values would make HF compute something tessera does not.
  if (j.contains("activation_function")) {
    const std::string act =
        j["activation_function"].is_string() ? j["activation_function"].get<std::string>() : "";
    TS_CHECK(act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast",
             "HF config {}: activation_function {} is not supported: tessera implements the tanh "
             "GELU (gelu_new)",
             path, j["activation_function"].dump());
  }
  if (j.contains("layer_norm_epsilon")) {
    TS_CHECK(j["layer_norm_epsilon"].is_number() &&
                 std::abs(j["layer_norm_epsilon"].get<double>() - 1e-5) <= 1e-12,
             "HF config {}: layer_norm_epsilon {} is not supported: tessera's LayerNorm uses 1e-5",
             path, j["layer_norm_epsilon"].dump());
  }
  if (const std::optional<int> n_inner = get_int("n_inner")) {
    TS_CHECK(*n_inner == 4 * config.n_embd,
             "HF config {}: n_inner {} is not supported: tessera's MLP is 4 * n_embd = {} wide",
             path, *n_inner, 4 * config.n_embd);
  }
  auto require_bool = [&](const char* key, bool want, const char* why) {
    if (!j.contains(key)) return;
    TS_CHECK(j[key].is_boolean() && j[key].get<bool>() == want,
             "HF config {}: {} = {} is not supported: {}", path, key, j[key].dump(), why);
  };
  require_bool("tie_word_embeddings", true, "tessera always ties lm_head to wte");
  require_bool("scale_attn_weights", true, "tessera scales attention scores by 1/sqrt(head size)");
  require_bool("scale_attn_by_inverse_layer_idx", false,
               "tessera does not scale attention by the layer index");
  require_bool("add_cross_attention", false, "tessera's GPT has no cross-attention");
  try {
    config.validate();
  } catch (const InvalidArgument& e) {
    TS_THROW(InvalidArgument, "HF config {}: {}", path, e.what());
  }
  return config;
}

}  // namespace tessera::models
