#include "runtime/engine/config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "runtime/core/error.h"
#include "runtime/engine/token_data.h"

namespace tessera::engine {
namespace {

using nlohmann::json;

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// Reads one JSON object, remembering which keys were consumed, so that whatever is left
// over can be reported as unknown with the closest known key.
class Block {
 public:
  Block(const json& j, std::string path, std::string source)
      : j_(j), path_(std::move(path)), source_(std::move(source)) {
    TS_CHECK(j_.is_object(), "{}: '{}' must be a JSON object, got {}", source_, path_or_root(),
             j_.type_name());
  }

  bool has(const std::string& key) {
    known_.insert(key);
    return j_.contains(key);
  }

  template <typename T>
  void get(const std::string& key, T& out) {
    if (!has(key)) return;
    const json& v = j_.at(key);
    try {
      if constexpr (std::is_same_v<T, bool>) {
        TS_CHECK(v.is_boolean(), "not a boolean");
      } else if constexpr (std::is_integral_v<T>) {
        TS_CHECK(v.is_number_integer(), "not an integer");
        // nlohmann converts out-of-range integers silently (wrapping); refuse them.
        if (v.is_number_unsigned()) {
          TS_CHECK(v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<T>::max()),
                   "out of range");
        } else {
          const int64_t x = v.get<int64_t>();
          TS_CHECK(x >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
                       (x < 0 || static_cast<uint64_t>(x) <=
                                     static_cast<uint64_t>(std::numeric_limits<T>::max())),
                   "out of range");
        }
      } else if constexpr (std::is_floating_point_v<T>) {
        TS_CHECK(v.is_number(), "not a number");
        // 1e300 would silently become an infinite learning rate in a float.
        const double d = v.get<double>();
        TS_CHECK(std::isfinite(d) && std::abs(d) <= std::numeric_limits<T>::max(), "out of range");
      } else if constexpr (std::is_same_v<T, std::string>) {
        TS_CHECK(v.is_string(), "not a string");
      }
      out = v.get<T>();
    } catch (const std::exception&) {
      TS_THROW(InvalidArgument, "{}: '{}' must be {}{}, got {} ({})", source_, full(key),
               type_word<T>(), range_word<T>(), v.dump(), v.type_name());
    }
  }

  Block child(const std::string& key) {
    known_.insert(key);
    return Block(j_.at(key), full(key), source_);
  }
  const json& raw(const std::string& key) {
    known_.insert(key);
    return j_.at(key);
  }
  std::string full(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  const std::string& source() const { return source_; }

  // Every key of this object must have been asked for.
  void reject_unknown() const {
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      if (known_.count(it.key())) continue;
      std::string best;
      size_t best_d = 4;  // suggest only close matches
      for (const std::string& k : known_) {
        const size_t d = edit_distance(it.key(), k);
        if (d < best_d) best_d = d, best = k;
      }
      if (!best.empty()) {
        TS_THROW(InvalidArgument, "{}: unknown key '{}'; did you mean '{}'?", source_,
                 full(it.key()), full(best));
      }
      TS_THROW(InvalidArgument, "{}: unknown key '{}' (see docs/CONFIG.md for the keys)", source_,
               full(it.key()));
    }
  }

 private:
  template <typename T>
  static const char* type_word() {
    if constexpr (std::is_same_v<T, bool>) return "true or false";
    else if constexpr (std::is_integral_v<T>) return "an integer";
    else if constexpr (std::is_floating_point_v<T>) return "a number";
    else return "a string";
  }
  template <typename T>
  static std::string range_word() {
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      return fmt::format(" in [{}, {}]", std::numeric_limits<T>::min(), std::numeric_limits<T>::max());
    } else if constexpr (std::is_floating_point_v<T>) {
      return fmt::format(" of magnitude at most {:g}", std::numeric_limits<T>::max());
    } else {
      return "";
    }
  }
  std::string path_or_root() const { return path_.empty() ? "<root>" : path_; }

  const json& j_;
  std::string path_;
  std::string source_;
  std::set<std::string> known_;
};

std::vector<std::string> string_or_list(Block& b, const std::string& key) {
  std::vector<std::string> out;
  if (!b.has(key)) return out;
  const json& v = b.raw(key);
  if (v.is_string()) return {v.get<std::string>()};
  TS_CHECK(v.is_array(), "{}: '{}' must be a path or a list of paths", b.source(), b.full(key));
  for (const json& e : v) {
    TS_CHECK(e.is_string(), "{}: '{}' must be a list of strings", b.source(), b.full(key));
    out.push_back(e.get<std::string>());
  }
  return out;
}

memory::OffloadDevice parse_offload_device(Block& b) {
  std::string device = "none";
  b.get("device", device);
  if (device == "none") return memory::OffloadDevice::None;
  if (device == "cpu") return memory::OffloadDevice::Cpu;
  if (device == "nvme") return memory::OffloadDevice::Nvme;
  TS_THROW(InvalidArgument, "{}: '{}' is \"{}\": use \"none\", \"cpu\" or \"nvme\"",
           b.source(), b.full("device"), device);
}

// Sizes DeepSpeed configs write as 1e8: integral JSON floats too.
void get_block_count(Block& b, const std::string& key, int64_t& out) {
  if (!b.has(key)) return;
  const json& v = b.raw(key);
  if (v.is_number_float() && std::isfinite(v.get<double>()) &&
      v.get<double>() == std::floor(v.get<double>()) && std::abs(v.get<double>()) < 9e18) {
    out = static_cast<int64_t>(v.get<double>());
  } else {
    b.get(key, out);
  }
  TS_CHECK(out >= 0, "{}: '{}' must be >= 0, got {}", b.source(), b.full(key), out);
}

}  // namespace

memory::ZeroOptions ZeroConfig::options() const {
  memory::ZeroOptions z;
  z.stage = stage;
  z.reduce_bucket_elems = reduce_bucket_size;
  z.overlap_comm = overlap_comm;
  z.prefetch_elems = stage3_prefetch_bucket_size;
  z.persistence_threshold = stage3_param_persistence_threshold;
  z.max_live_elems = stage3_max_live_parameters;
  z.sub_group_elems = sub_group_size;
  z.offload_optimizer = offload_optimizer;
  z.offload_param = offload_param;
  z.aio = aio;
  return z;
}

void TrainConfig::resolve_batch(int dp_world) {
  const int64_t world = dp_world;
  const bool have_total = train_batch_size > 0, have_micro = micro_batch_size > 0,
             have_accum = gradient_accumulation_steps > 0;
  // micro x accumulation x world of two positive ints and the world size can pass int64.
  auto product = [&] {
    int64_t p = 0;
    TS_CHECK(
        !__builtin_mul_overflow(int64_t{micro_batch_size} * gradient_accumulation_steps, world, &p),
        "train_micro_batch_size_per_gpu {} x gradient_accumulation_steps {} x data-parallel "
        "size {} overflows a 64-bit count: lower the batch sizes",
        micro_batch_size, gradient_accumulation_steps, world);
    return p;
  };
  // A quotient of train_batch_size must fit the int it is stored in: 2^32 + 1 must not
  // become a micro batch of 1.
  auto narrow = [&](int64_t v, const char* key) {
    TS_CHECK(v <= std::numeric_limits<int>::max(),
             "train_batch_size {} makes {} = {}, more than {}: lower train_batch_size or set {}",
             train_batch_size, key, v, std::numeric_limits<int>::max(), key);
    return static_cast<int>(v);
  };
  if (have_total && have_micro && have_accum) {
    TS_CHECK(train_batch_size == product(),
             "train_batch_size {} != train_micro_batch_size_per_gpu {} x "
             "gradient_accumulation_steps {} x data-parallel size {} = {}: fix one of them",
             train_batch_size, micro_batch_size, gradient_accumulation_steps, world, product());
  } else if (have_total && have_micro) {
    TS_CHECK(train_batch_size % (int64_t{micro_batch_size} * world) == 0,
             "train_batch_size {} is not divisible by train_micro_batch_size_per_gpu {} x "
             "data-parallel size {}",
             train_batch_size, micro_batch_size, world);
    gradient_accumulation_steps =
        narrow(train_batch_size / (micro_batch_size * world), "gradient_accumulation_steps");
  } else if (have_total && have_accum) {
    TS_CHECK(train_batch_size % (int64_t{gradient_accumulation_steps} * world) == 0,
             "train_batch_size {} is not divisible by gradient_accumulation_steps {} x "
             "data-parallel size {}",
             train_batch_size, gradient_accumulation_steps, world);
    micro_batch_size = narrow(train_batch_size / (gradient_accumulation_steps * world),
                              "train_micro_batch_size_per_gpu");
  } else if (have_micro) {
    if (!have_accum) gradient_accumulation_steps = 1;
  } else if (have_total) {
    gradient_accumulation_steps = 1;
    TS_CHECK(train_batch_size % world == 0,
             "train_batch_size {} is not divisible by the data-parallel size {}", train_batch_size,
             world);
    micro_batch_size = narrow(train_batch_size / world, "train_micro_batch_size_per_gpu");
  } else {
    TS_THROW(InvalidArgument,
             "no batch size: set train_micro_batch_size_per_gpu (and optionally "
             "gradient_accumulation_steps or train_batch_size)");
  }
  TS_CHECK(micro_batch_size >= 1 && gradient_accumulation_steps >= 1,
           "batch sizes must be positive (micro batch {}, accumulation {})", micro_batch_size,
           gradient_accumulation_steps);
  train_batch_size = product();
}

std::string apply_overrides(const std::string& json_text, const std::vector<std::string>& overrides) {
  if (overrides.empty()) return json_text;
  json root = json::parse(json_text);  // a nlohmann exception here: load_train_config reports it
  TS_CHECK(root.is_object(),
           "--set '{}': the config is a JSON {}, not an object of settings; fix the config file",
           overrides.front(), root.type_name());
  for (const std::string& o : overrides) {
    // JSON text is UTF-8; a key or bare-word value that is not would fail in dump() below,
    // far from the override that brought it.
    try {
      (void)json(o).dump();
    } catch (const json::type_error&) {
      TS_THROW(InvalidArgument, "--set {} is not valid UTF-8: write keys and values as UTF-8",
               json(o).dump(-1, ' ', true, json::error_handler_t::replace));
    }
    const size_t eq = o.find('=');
    TS_CHECK(eq != std::string::npos && eq > 0, "--set '{}' must look like key.path=value", o);
    const std::string path = o.substr(0, eq), text = o.substr(eq + 1);
    json value;
    try {
      value = json::parse(text);
    } catch (const json::parse_error&) {
      value = text;  // bare words are strings: --set data.train=foo.bin
    } catch (const json::out_of_range&) {
      // 1e999: nlohmann's number overflow, not a parse_error.
      TS_THROW(InvalidArgument, "--set '{}': {} is out of range for a number; give a finite value",
               o, text);
    }
    json* node = &root;
    size_t start = 0;
    while (true) {
      const size_t dot = path.find('.', start);
      const std::string key = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      TS_CHECK(!key.empty(), "--set '{}': empty key in the path", o);
      if (dot == std::string::npos) {
        (*node)[key] = value;
        break;
      }
      if (!node->contains(key)) (*node)[key] = json::object();
      node = &(*node)[key];
      TS_CHECK(node->is_object(), "--set '{}': '{}' is not an object", o, path.substr(0, dot));
      start = dot + 1;
    }
  }
  return root.dump();
}

TrainConfig parse_train_config(const std::string& json_text, const std::string& source) {
  json root_json;
  try {
    root_json = json::parse(json_text);
  } catch (const json::exception& e) {
    // nlohmann's message carries the byte position; keep it, drop its "[json.exception...]".
    std::string what = e.what();
    const size_t cut = what.find("] ");
    TS_THROW(InvalidArgument, "{}: malformed JSON: {}", source,
             cut == std::string::npos ? what : what.substr(cut + 2));
  }
  TrainConfig c;
  Block root(root_json, "", source);
  root.get("train_batch_size", c.train_batch_size);
  root.get("train_micro_batch_size_per_gpu", c.micro_batch_size);
  root.get("gradient_accumulation_steps", c.gradient_accumulation_steps);
  root.get("gradient_clipping", c.gradient_clipping);
  root.get("steps_per_print", c.steps_per_print);
  TS_CHECK(c.gradient_clipping >= 0, "{}: gradient_clipping must be >= 0 (0 turns it off)", source);
  TS_CHECK(c.steps_per_print >= 1, "{}: steps_per_print must be >= 1", source);

  if (root.has("optimizer")) {
    Block opt = root.child("optimizer");
    opt.get("type", c.optimizer.type);
    TS_CHECK(c.optimizer.type == "AdamW" || c.optimizer.type == "Adam",
             "{}: optimizer.type '{}' is not supported: use AdamW or Adam", source, c.optimizer.type);
    if (opt.has("params")) {
      Block p = opt.child("params");
      p.get("lr", c.optimizer.lr);
      p.get("eps", c.optimizer.eps);
      p.get("weight_decay", c.optimizer.weight_decay);
      if (p.has("betas")) {
        const json& b = p.raw("betas");
        TS_CHECK(b.is_array() && b.size() == 2 && b[0].is_number() && b[1].is_number(),
                 "{}: optimizer.params.betas must be a list of two numbers, got {}", source, b.dump());
        c.optimizer.beta1 = b[0].get<float>();
        c.optimizer.beta2 = b[1].get<float>();
      }
      p.reject_unknown();
    }
    opt.reject_unknown();
    TS_CHECK(c.optimizer.lr > 0, "{}: optimizer.params.lr must be > 0", source);
    TS_CHECK(c.optimizer.beta1 >= 0 && c.optimizer.beta1 < 1 && c.optimizer.beta2 >= 0 &&
                 c.optimizer.beta2 < 1,
             "{}: optimizer betas must be in [0, 1)", source);
  }
  if (root.has("scheduler")) {
    Block sch = root.child("scheduler");
    sch.get("type", c.scheduler.type);
    TS_CHECK(c.scheduler.type == "WarmupLR" || c.scheduler.type == "WarmupDecayLR" ||
                 c.scheduler.type == "WarmupCosineLR",
             "{}: scheduler.type '{}' is not supported: use WarmupLR, WarmupDecayLR or "
             "WarmupCosineLR",
             source, c.scheduler.type);
    if (sch.has("params")) {
      Block p = sch.child("params");
      p.get("warmup_num_steps", c.scheduler.warmup_num_steps);
      p.get("warmup_type", c.scheduler.warmup_type);
      p.get("total_num_steps", c.scheduler.total_num_steps);
      if (c.scheduler.type == "WarmupCosineLR") {
        p.get("warmup_min_ratio", c.scheduler.warmup_min_ratio);
        p.get("cos_min_ratio", c.scheduler.cos_min_ratio);
      } else {
        p.get("warmup_min_lr", c.scheduler.warmup_min_lr);
        p.get("warmup_max_lr", c.scheduler.warmup_max_lr);
      }
      p.reject_unknown();
    }
    sch.reject_unknown();
    TS_CHECK(c.scheduler.warmup_type == "log" || c.scheduler.warmup_type == "linear",
             "{}: scheduler.params.warmup_type '{}' must be log or linear", source,
             c.scheduler.warmup_type);
    TS_CHECK(c.scheduler.warmup_num_steps >= 0, "{}: warmup_num_steps must be >= 0", source);
  }
  if (root.has("fp16")) {
    // DeepSpeed's fp16 block: disabled unless enabled: true; the scaler keys apply to fp16.
    Block f = root.child("fp16");
    bool enabled = false, auto_cast = false;
    f.get("enabled", enabled);
    f.get("auto_cast", auto_cast);
    f.get("loss_scale", c.loss_scaler.loss_scale);
    f.get("initial_scale_power", c.loss_scaler.initial_scale_power);
    f.get("loss_scale_window", c.loss_scaler.loss_scale_window);
    f.get("hysteresis", c.loss_scaler.hysteresis);
    f.get("consecutive_hysteresis", c.loss_scaler.consecutive_hysteresis);
    f.get("min_loss_scale", c.loss_scaler.min_loss_scale);
    f.reject_unknown();
    TS_CHECK(!auto_cast,
             "{}: fp16.auto_cast is not supported (tessera runs the whole model in its working "
             "precision): remove it or set it to false",
             source);
    LossScaler check(c.loss_scaler);  // names the key of an unusable value
    if (enabled) c.precision = DType::F16;
  }
  std::string enabled_block = c.precision == DType::F16 ? "fp16" : "";
  for (const char* key : {"bf16", "bfloat16"}) {  // DeepSpeed accepts both spellings
    if (!root.has(key)) continue;
    Block b = root.child(key);
    bool enabled = false;
    b.get("enabled", enabled);
    b.reject_unknown();
    if (!enabled) continue;
    TS_CHECK(enabled_block.empty(),
             "{}: '{}' and '{}' are both enabled: enable one of them (bf16 needs no loss scaling)",
             source, enabled_block, key);
    enabled_block = key;
    c.precision = DType::BF16;
  }
  if (root.has("zero_optimization")) {
    Block z = root.child("zero_optimization");
    // DeepSpeed configs write element counts as 5e8: accept integral JSON floats too.
    auto get_count = [&z](const std::string& key, int64_t& out) { get_block_count(z, key, out); };
    z.get("stage", c.zero.stage);
    get_count("reduce_bucket_size", c.zero.reduce_bucket_size);
    z.get("overlap_comm", c.zero.overlap_comm);
    z.get("contiguous_gradients", c.zero.contiguous_gradients);
    get_count("allgather_bucket_size", c.zero.allgather_bucket_size);
    z.get("reduce_scatter", c.zero.reduce_scatter);
    bool allgather_partitions = true;
    z.get("allgather_partitions", allgather_partitions);
    get_count("stage3_prefetch_bucket_size", c.zero.stage3_prefetch_bucket_size);
    get_count("stage3_param_persistence_threshold", c.zero.stage3_param_persistence_threshold);
    get_count("stage3_max_live_parameters", c.zero.stage3_max_live_parameters);
    get_count("stage3_max_reuse_distance", c.zero.stage3_max_reuse_distance);
    get_count("sub_group_size", c.zero.sub_group_size);
    if (z.has("offload_optimizer") && !z.raw("offload_optimizer").is_null()) {
      Block o = z.child("offload_optimizer");
      memory::OffloadOptimizerOptions& opt = c.zero.offload_optimizer;
      opt.device = parse_offload_device(o);
      o.get("nvme_path", opt.nvme_path);
      o.get("buffer_count", opt.buffer_count);
      o.get("pin_memory", opt.pin_memory);
      o.get("pipeline_read", opt.pipeline_read);
      o.get("pipeline_write", opt.pipeline_write);
      // DeepSpeed's "pipeline" sets both.
      bool pipeline = false;
      o.get("pipeline", pipeline);
      if (pipeline) opt.pipeline_read = opt.pipeline_write = true;
      o.get("fast_init", opt.fast_init);
      double ratio = 1.0;
      o.get("ratio", ratio);
      o.reject_unknown();
      TS_CHECK(ratio == 1.0,
               "{}: zero_optimization.offload_optimizer.ratio {} (a partial offload) is not "
               "supported: offload all of the optimizer (ratio 1.0) or none",
               source, ratio);
      TS_CHECK(opt.buffer_count >= 1,
               "{}: zero_optimization.offload_optimizer.buffer_count must be >= 1, got {}", source,
               opt.buffer_count);
      TS_CHECK(opt.device != memory::OffloadDevice::Nvme || !opt.nvme_path.empty(),
               "{}: zero_optimization.offload_optimizer.nvme_path is empty: name the folder on "
               "the fast disk where the optimizer's swap files go",
               source);
    }
    if (z.has("offload_param") && !z.raw("offload_param").is_null()) {
      Block o = z.child("offload_param");
      memory::OffloadParamOptions& opt = c.zero.offload_param;
      opt.device = parse_offload_device(o);
      o.get("nvme_path", opt.nvme_path);
      o.get("buffer_count", opt.buffer_count);
      get_block_count(o, "buffer_size", opt.buffer_size);
      get_block_count(o, "max_in_cpu", opt.max_in_cpu);
      o.get("pin_memory", opt.pin_memory);
      o.reject_unknown();
      TS_CHECK(opt.buffer_count >= 2,
               "{}: zero_optimization.offload_param.buffer_count must be >= 2 (a layer in use and "
               "the next read ahead), got {}",
               source, opt.buffer_count);
      TS_CHECK(opt.buffer_size >= 1 && opt.max_in_cpu >= 0,
               "{}: zero_optimization.offload_param.buffer_size must be >= 1 and max_in_cpu >= 0",
               source);
    }
    z.reject_unknown();
    TS_CHECK(c.zero.stage >= 0 && c.zero.stage <= 3,
             "{}: zero_optimization.stage {} does not exist: use 0, 1, 2 or 3", source,
             c.zero.stage);
    TS_CHECK(c.zero.reduce_bucket_size >= 1, "{}: zero_optimization.reduce_bucket_size must be >= 1",
             source);
    TS_CHECK(c.zero.stage3_max_live_parameters >= 1,
             "{}: zero_optimization.stage3_max_live_parameters must be >= 1", source);
    TS_CHECK(c.zero.sub_group_size >= 1, "{}: zero_optimization.sub_group_size must be >= 1",
             source);
    // DeepSpeed's rules: the optimizer's shard moves at stages 1-3 (DeepSpeed keeps NVMe for
    // stage 3; tessera swaps any stage's shard), parameters only at stage 3.
    TS_CHECK(c.zero.offload_optimizer.device == memory::OffloadDevice::None || c.zero.stage >= 1,
             "{}: zero_optimization.offload_optimizer moves the optimizer's shard, which ZeRO "
             "stage 0 does not have: set zero_optimization.stage to 1, 2 or 3",
             source);
    TS_CHECK(c.zero.offload_param.device == memory::OffloadDevice::None || c.zero.stage == 3,
             "{}: zero_optimization.offload_param needs ZeRO stage 3 (only stage 3 partitions "
             "the parameters): set zero_optimization.stage to 3",
             source);
    TS_CHECK(c.zero.offload_param.device != memory::OffloadDevice::Nvme ||
                 !c.zero.offload_param.nvme_path.empty(),
             "{}: zero_optimization.offload_param.nvme_path is empty: name the folder on the "
             "fast disk where the parameters' swap files go",
             source);
  }
  if (root.has("aio")) {
    Block a = root.child("aio");
    memory::offload::AioOptions& aio = c.zero.aio;
    get_block_count(a, "block_size", aio.block_size);
    a.get("queue_depth", aio.queue_depth);
    a.get("intra_op_parallelism", aio.intra_op_parallelism);
    a.get("thread_count", aio.intra_op_parallelism);  // DeepSpeed's newer name
    a.get("single_submit", aio.single_submit);
    a.get("overlap_events", aio.overlap_events);
    bool use_gds = false;
    a.get("use_gds", use_gds);
    a.reject_unknown();
    TS_CHECK(!use_gds,
             "{}: aio.use_gds (GPUDirect Storage) is not supported: remove it or set it false",
             source);
    TS_CHECK(aio.block_size >= memory::offload::kIoAlign &&
                 aio.block_size % memory::offload::kIoAlign == 0,
             "{}: aio.block_size must be a multiple of {} bytes (O_DIRECT transfers are "
             "aligned), got {}: DeepSpeed's default is 1048576",
             source, memory::offload::kIoAlign, aio.block_size);
    TS_CHECK(aio.queue_depth >= 1 && aio.queue_depth <= 4096,
             "{}: aio.queue_depth must be in [1, 4096], got {}", source, aio.queue_depth);
    TS_CHECK(aio.intra_op_parallelism >= 1 && aio.intra_op_parallelism <= 256,
             "{}: aio.intra_op_parallelism must be in [1, 256], got {}", source,
             aio.intra_op_parallelism);
  }

  if (root.has("parallelism")) {
    Block p = root.child("parallelism");
    p.get("tensor_model_parallel_size", c.tensor_parallel);
    p.get("sequence_parallel", c.sequence_parallel);
    p.get("pipeline_model_parallel_size", c.pipeline_parallel);
    if (p.has("virtual_pipeline_model_parallel_size") &&
        p.raw("virtual_pipeline_model_parallel_size").is_null()) {
      c.virtual_pipeline = 1;  // Megatron's None
    } else {
      p.get("virtual_pipeline_model_parallel_size", c.virtual_pipeline);
    }
    p.get("pipeline_schedule", c.pipeline_schedule);
    p.get("pipeline_partition", c.pipeline_partition);
    p.reject_unknown();
    TS_CHECK(c.tensor_parallel >= 1, "{}: parallelism.tensor_model_parallel_size must be >= 1",
             source);
    TS_CHECK(c.pipeline_parallel >= 1, "{}: parallelism.pipeline_model_parallel_size must be >= 1",
             source);
    TS_CHECK(c.virtual_pipeline >= 1,
             "{}: parallelism.virtual_pipeline_model_parallel_size must be >= 1", source);
    TS_CHECK(c.pipeline_schedule == "1f1b" || c.pipeline_schedule == "gpipe" ||
                 c.pipeline_schedule == "interleaved",
             "{}: parallelism.pipeline_schedule '{}' is not one of 1f1b, gpipe, interleaved", source,
             c.pipeline_schedule);
    if (c.virtual_pipeline > 1 && c.pipeline_schedule == "1f1b") c.pipeline_schedule = "interleaved";
    TS_CHECK(c.virtual_pipeline == 1 || c.pipeline_schedule == "interleaved",
             "{}: parallelism.virtual_pipeline_model_parallel_size {} needs the interleaved "
             "schedule, not {}: set pipeline_schedule to interleaved or the virtual size to 1",
             source, c.virtual_pipeline, c.pipeline_schedule);
    TS_CHECK(!c.sequence_parallel || c.tensor_parallel > 1,
             "{}: parallelism.sequence_parallel splits the sequence over tensor-parallel ranks: "
             "set tensor_model_parallel_size > 1 or turn it off",
             source);
  }

  if (root.has("activation_checkpointing")) {
    // DeepSpeed's block, in Megatron's terms; present means checkpointing (full by default).
    Block a = root.child("activation_checkpointing");
    std::string granularity = "full", method = "uniform";
    a.get("recompute_granularity", granularity);
    a.get("recompute_method", method);
    models::RecomputePolicy& r = c.recompute;
    const bool has_layers = a.has("recompute_num_layers");
    a.get("recompute_num_layers", r.num_layers);
    if (a.has("number_checkpoints") && !a.raw("number_checkpoints").is_null()) {
      a.get("number_checkpoints", r.number_checkpoints);
      TS_CHECK(r.number_checkpoints >= 1,
               "{}: activation_checkpointing.number_checkpoints must be >= 1 (or null), got {}",
               source, r.number_checkpoints);
      TS_CHECK(!has_layers,
               "{}: activation_checkpointing sets both number_checkpoints and "
               "recompute_num_layers: keep one",
               source);
    }
    a.get("cpu_checkpointing", r.cpu_checkpointing);
    bool partition = false, contiguous = false, synchronize = false, profile = false;
    a.get("partition_activations", partition);
    // Checkpoints always live in one contiguous arena, and the CPU kernels (and the CUDA
    // table's single stream) order recomputation after its inputs: parsed, no effect.
    a.get("contiguous_memory_optimization", contiguous);
    a.get("synchronize_checkpoint_boundary", synchronize);
    a.get("profile", profile);
    a.reject_unknown();
    if (granularity == "full") {
      r.granularity = models::RecomputeGranularity::Full;
    } else if (granularity == "selective") {
      r.granularity = models::RecomputeGranularity::Selective;
    } else if (granularity == "none") {
      r.granularity = models::RecomputeGranularity::None;
    } else {
      TS_THROW(InvalidArgument,
               "{}: activation_checkpointing.recompute_granularity '{}' must be full, selective "
               "or none",
               source, granularity);
    }
    TS_CHECK(method == "uniform" || method == "block",
             "{}: activation_checkpointing.recompute_method '{}' must be uniform or block", source,
             method);
    r.method = method == "block" ? models::RecomputeMethod::Block : models::RecomputeMethod::Uniform;
    TS_CHECK(r.num_layers >= 1, "{}: activation_checkpointing.recompute_num_layers must be >= 1",
             source);
    TS_CHECK(r.granularity == models::RecomputeGranularity::Full ||
                 (!has_layers && r.number_checkpoints == 0 && method == "uniform"),
             "{}: activation_checkpointing: recompute_method, recompute_num_layers and "
             "number_checkpoints apply to recompute_granularity full only",
             source);
    TS_CHECK(!r.cpu_checkpointing || r.granularity == models::RecomputeGranularity::Full,
             "{}: activation_checkpointing.cpu_checkpointing keeps full checkpoints on the host: "
             "set recompute_granularity to full",
             source);
    TS_CHECK(!partition,
             "{}: activation_checkpointing.partition_activations is not supported (with "
             "parallelism.sequence_parallel the checkpoints are already split over the "
             "tensor-parallel ranks): set it to false",
             source);
    TS_CHECK(!profile,
             "{}: activation_checkpointing.profile is not supported (the step time already "
             "includes recomputation): set it to false",
             source);
  }

  TS_CHECK(root.has("model"), "{}: missing the 'model' block (e.g. \"model\": {{\"preset\": \"tiny\"}})",
           source);
  {
    Block m = root.child("model");
    m.get("preset", c.model_preset);
    if (!c.model_preset.empty()) c.model = models::gpt_preset(c.model_preset);
    m.get("n_layer", c.model.n_layer);
    m.get("n_head", c.model.n_head);
    m.get("n_embd", c.model.n_embd);
    m.get("vocab_size", c.model.vocab_size);
    m.get("block_size", c.model.block_size);
    m.get("init_from", c.init_from);
    m.reject_unknown();
    c.model.validate();
    TS_CHECK(c.model.n_head % c.tensor_parallel == 0,
             "{}: parallelism.tensor_model_parallel_size {} does not divide model.n_head {}: each "
             "rank holds whole attention heads, so choose a divisor of {}",
             source, c.tensor_parallel, c.model.n_head, c.model.n_head);
    const int virtual_stages = c.pipeline_parallel * c.virtual_pipeline;
    TS_CHECK(c.model.n_layer >= virtual_stages,
             "{}: {} pipeline stage(s) x {} model chunk(s) need at least {} transformer blocks, "
             "model.n_layer is {}: lower parallelism.pipeline_model_parallel_size or the virtual "
             "size",
             source, c.pipeline_parallel, c.virtual_pipeline, virtual_stages, c.model.n_layer);
  }
  TS_CHECK(root.has("data"), "{}: missing the 'data' block (\"data\": {{\"train\": \"...bin\"}})",
           source);
  {
    Block d = root.child("data");
    c.train_files = string_or_list(d, "train");
    c.val_files = string_or_list(d, "val");
    d.get("seq_len", c.seq_len);
    d.get("shuffle", c.shuffle);
    d.get("format", c.data_format);
    d.reject_unknown();
    parse_token_format(c.data_format);  // rejects an unknown name now, not at the first batch
    TS_CHECK(!c.train_files.empty(), "{}: data.train names no token file", source);
    if (c.seq_len == 0) c.seq_len = c.model.block_size;
    TS_CHECK(c.seq_len >= 1 && c.seq_len <= c.model.block_size,
             "{}: data.seq_len {} must be in [1, model.block_size = {}]", source, c.seq_len,
             c.model.block_size);
  }
  if (root.has("training")) {
    Block t = root.child("training");
    t.get("steps", c.steps);
    t.get("seed", c.seed);
    t.get("threads", c.threads);
    t.get("eval_interval", c.eval_interval);
    t.get("eval_iters", c.eval_iters);
    t.get("sample_tokens", c.sample_tokens);
    t.get("sample_prompt", c.sample_prompt);
    t.get("sample_temperature", c.sample_temperature);
    t.get("sample_top_k", c.sample_top_k);
    t.get("trace_file", c.trace_file);
    t.get("trace_step", c.trace_step);
    t.reject_unknown();
    TS_CHECK(c.trace_step >= 1, "{}: training.trace_step is 1-based, got {}", source, c.trace_step);
    TS_CHECK(c.steps >= 0, "{}: training.steps must be >= 0", source);
    TS_CHECK(c.threads >= 0, "{}: training.threads must be >= 0 (0 = all cores)", source);
    TS_CHECK(c.eval_iters >= 1, "{}: training.eval_iters must be >= 1", source);
    TS_CHECK(std::isfinite(c.sample_temperature) && c.sample_temperature >= 0,
             "{}: training.sample_temperature must be a finite number >= 0 (0 = greedy), got {}",
             source, c.sample_temperature);
    TS_CHECK(c.sample_top_k >= 0, "{}: training.sample_top_k must be >= 0 (0 = no cut), got {}",
             source, c.sample_top_k);
  }
  if (root.has("checkpoint")) {
    Block k = root.child("checkpoint");
    k.get("dir", c.checkpoint.dir);
    k.get("save_interval", c.checkpoint.save_interval);
    k.get("keep_last", c.checkpoint.keep_last);
    k.get("async_save", c.checkpoint.async_save);
    k.get("resume", c.checkpoint.resume);
    k.reject_unknown();
    TS_CHECK(c.checkpoint.save_interval >= 0,
             "{}: checkpoint.save_interval must be >= 0 (0 = only at the end), got {}", source,
             c.checkpoint.save_interval);
    TS_CHECK(c.checkpoint.keep_last >= 0,
             "{}: checkpoint.keep_last must be >= 0 (0 = keep all), got {}", source,
             c.checkpoint.keep_last);
    TS_CHECK(!c.checkpoint.dir.empty() ||
                 (c.checkpoint.save_interval == 0 && !c.checkpoint.async_save &&
                  (c.checkpoint.resume.empty() || c.checkpoint.resume != "latest")),
             "{}: the checkpoint block needs checkpoint.dir (where step folders go) for saving "
             "or --resume latest",
             source);
  }
  if (root.has("output")) {
    Block o = root.child("output");
    o.get("dir", c.output_dir);
    o.reject_unknown();
  }
  root.reject_unknown();
  TS_CHECK(c.virtual_pipeline == 1 || c.pipeline_parallel >= 2,
           "{}: parallelism.virtual_pipeline_model_parallel_size {} interleaves model chunks over "
           "pipeline stages: set pipeline_model_parallel_size >= 2 or the virtual size to 1",
           source, c.virtual_pipeline);
  TS_CHECK(c.pipeline_parallel == 1 || c.zero.stage <= 2,
           "{}: zero_optimization.stage 3 with parallelism.pipeline_model_parallel_size {} is not "
           "supported (stage 3's gathers follow one forward then one backward per micro-batch, "
           "which a pipeline schedule interleaves): use stage 0, 1 or 2 with pipelines",
           source, c.pipeline_parallel);
  return c;
}

TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  TS_CHECK(in.good(), "cannot read config file '{}': check the path", path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (!overrides.empty()) {
    try {
      text = apply_overrides(text, overrides);
    } catch (const nlohmann::json::exception&) {
      // The file itself is not JSON (a parse_error, or out_of_range for 1e999; overrides
      // throw only InvalidArgument): report the file's own error below, not the override's.
    }
  }
  return parse_train_config(text, path);
}

}  // namespace tessera::engine
