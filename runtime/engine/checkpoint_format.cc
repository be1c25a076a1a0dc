#include "runtime/engine/checkpoint_format.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>

#include "runtime/core/error.h"

namespace tessera::engine {

using nlohmann::json;

const char* tensor_kind_name(TensorKind kind) {
  switch (kind) {
    case TensorKind::Master: return "master";
    case TensorKind::ExpAvg: return "exp_avg";
    case TensorKind::ExpAvgSq: return "exp_avg_sq";
    case TensorKind::Working: return "working";
  }
  return "?";
}

TensorKind parse_tensor_kind(const std::string& name) {
  for (TensorKind k : {TensorKind::Master, TensorKind::ExpAvg, TensorKind::ExpAvgSq,
                       TensorKind::Working}) {
    if (name == tensor_kind_name(k)) return k;
  }
  TS_THROW(InvalidArgument,
           "unknown tensor kind '{}' (expected master, exp_avg, exp_avg_sq or working)", name);
}

Box intersect(const Box& a, const Box& b) {
  Box r;
  r.row = std::max(a.row, b.row);
  r.col = std::max(a.col, b.col);
  r.rows = std::max<int64_t>(0, std::min(a.row + a.rows, b.row + b.rows) - r.row);
  r.cols = std::max<int64_t>(0, std::min(a.col + a.cols, b.col + b.cols) - r.col);
  return r;
}

int64_t view_rows(const Shape& shape) { return shape.empty() ? 1 : shape[0]; }
int64_t view_cols(const Shape& shape) {
  return shape.size() >= 2 ? shape_numel(shape) / std::max<int64_t>(1, shape[0]) : 1;
}

std::vector<LocalPiece> local_pieces(const ParamSpec& p, int64_t begin, int64_t end) {
  std::vector<LocalPiece> out;
  const int64_t cols = view_cols(p.shape);
  const Shape& whole = p.tp.split() ? p.tp.whole : p.shape;
  const int64_t whole_rows = view_rows(whole);
  const std::vector<TpSlice::RowRun> runs =
      p.tp.split() ? p.tp.runs : std::vector<TpSlice::RowRun>{{0, view_rows(p.shape)}};
  const int64_t col0 = p.tp.split() ? p.tp.col_begin : 0;
  // A run of `rows` local rows from local row `row` (element `at` of the part) lands at whole
  // row `whole_row`: one box, clipped to the whole tensor's rows (the rest is padding).
  auto emit = [&](int64_t at, int64_t whole_row, int64_t rows, int64_t col, int64_t ncols) {
    rows = std::min(rows, whole_rows - whole_row);
    if (rows <= 0 || ncols <= 0) return;
    out.push_back({at, Box{whole_row, rows, col0 + col, ncols}});
  };
  int64_t first_row = 0;  // the run's first local row
  for (const TpSlice::RowRun& run : runs) {
    const int64_t run_begin = first_row * cols, run_end = (first_row + run.rows) * cols;
    const int64_t b = std::max(begin, run_begin), e = std::min(end, run_end);
    if (b < e) {
      // [b, e) of the run: a partial first row, whole rows, a partial last row.
      int64_t at = b;
      const int64_t head_col = (at - run_begin) % cols;
      if (head_col != 0) {
        const int64_t n = std::min(cols - head_col, e - at);
        emit(at, run.whole_row + (at - run_begin) / cols, 1, head_col, n);
        at += n;
      }
      const int64_t full = (e - at) / cols;
      if (full > 0) {
        emit(at, run.whole_row + (at - run_begin) / cols, full, 0, cols);
        at += full * cols;
      }
      if (at < e) emit(at, run.whole_row + (at - run_begin) / cols, 1, 0, e - at);
    }
    first_row += run.rows;
  }
  return out;
}

std::string saved_tensor_name(const ParamSpec& p) {
  return p.name == "lm_head.weight" ? "wte.weight" : p.name;
}

const SavedTensor& Manifest::tensor(const std::string& name) const {
  for (const SavedTensor& t : tensors) {
    if (t.name == name) return t;
  }
  TS_THROW(Error, "the checkpoint holds no tensor '{}'", name);
}

uint64_t Manifest::total_bytes() const {
  uint64_t n = 0;
  for (const SavedPiece& p : pieces) n += p.bytes;
  return n;
}

namespace {

json piece_json(const SavedPiece& p, const Shape& shape) {
  // The box in the tensor's own dimensions: a vector has one, a matrix two.
  const bool vector = shape.size() <= 1;
  json j;
  j["tensor"] = p.tensor;
  j["kind"] = tensor_kind_name(p.kind);
  j["dtype"] = std::string(dtype_name(p.dtype));
  j["offsets"] = vector ? json::array({p.box.row}) : json::array({p.box.row, p.box.col});
  j["sizes"] = vector ? json::array({p.box.rows}) : json::array({p.box.rows, p.box.cols});
  j["file"] = p.file;
  j["byte_offset"] = p.byte_offset;
  j["bytes"] = p.bytes;
  j["crc32c"] = p.crc32c;
  return j;
}

// Reads a JSON value, turning nlohmann's type errors into one line naming the field.
template <typename T>
T field(const json& j, const char* key, const std::string& source) {
  TS_CHECK(j.is_object() && j.contains(key), "{}: missing '{}': the manifest is damaged", source,
           key);
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    TS_THROW(InvalidArgument, "{}: '{}' has the wrong type ({}): the manifest is damaged", source,
             key, j.at(key).dump());
  }
}

// A bound on any count a manifest gives (elements, rows, offsets): far above any model, low
// enough that no sum or product of two such counts overflows.
constexpr int64_t kMaxCount = int64_t{1} << 40;

bool in_range(int64_t x) { return x >= 0 && x <= kMaxCount; }

SavedPiece piece_from_json(const json& j, const std::string& source) {
  SavedPiece p;
  p.tensor = field<std::string>(j, "tensor", source);
  p.kind = parse_tensor_kind(field<std::string>(j, "kind", source));
  p.dtype = parse_dtype(field<std::string>(j, "dtype", source));
  const auto offsets = field<std::vector<int64_t>>(j, "offsets", source);
  const auto sizes = field<std::vector<int64_t>>(j, "sizes", source);
  TS_CHECK(offsets.size() == sizes.size() && (offsets.size() == 1 || offsets.size() == 2),
           "{}: a piece of '{}' has {} offsets and {} sizes: the manifest is damaged", source,
           p.tensor, offsets.size(), sizes.size());
  p.box = {offsets[0], sizes[0], offsets.size() == 2 ? offsets[1] : 0,
           sizes.size() == 2 ? sizes[1] : 1};
  p.file = field<std::string>(j, "file", source);
  p.byte_offset = field<uint64_t>(j, "byte_offset", source);
  p.bytes = field<uint64_t>(j, "bytes", source);
  p.crc32c = field<uint32_t>(j, "crc32c", source);
  TS_CHECK(p.file.find('/') == std::string::npos && !p.file.empty() && p.file != "..",
           "{}: piece file '{}' is not a file name in the checkpoint folder", source, p.file);
  TS_CHECK(in_range(p.box.row) && in_range(p.box.col) && in_range(p.box.rows) &&
               in_range(p.box.cols) && p.box.rows > 0 && p.box.cols > 0 &&
               p.box.rows <= kMaxCount / p.box.cols && p.byte_offset <= uint64_t{1} << 62 &&
               p.bytes == static_cast<uint64_t>(p.box.numel()) * dtype_size(p.dtype),
           "{}: a piece of '{}' ({} bytes) does not match its box: the manifest is damaged",
           source, p.tensor, p.bytes);
  return p;
}

json model_json(const models::GPTConfig& m) {
  return {{"n_layer", m.n_layer},
          {"n_head", m.n_head},
          {"n_embd", m.n_embd},
          {"vocab_size", m.vocab_size},
          {"block_size", m.block_size}};
}

}  // namespace

std::string pieces_to_json(const std::vector<SavedPiece>& pieces) {
  json arr = json::array();
  for (const SavedPiece& p : pieces) {
    // A shard's own list writes every box in two dimensions; the manifest uses the tensor's.
    arr.push_back(piece_json(p, Shape{1, 1}));
  }
  return arr.dump();
}

std::vector<SavedPiece> pieces_from_json(const std::string& text, const std::string& source) {
  json arr;
  try {
    arr = json::parse(text);
  } catch (const json::exception& e) {
    TS_THROW(Error, "{}: not JSON ({}): the shard's piece list is damaged", source, e.what());
  }
  TS_CHECK(arr.is_array(), "{}: expected a list of pieces", source);
  std::vector<SavedPiece> out;
  for (const json& j : arr) out.push_back(piece_from_json(j, source));
  return out;
}

std::string manifest_to_json(const Manifest& m) {
  json j;
  j["format"] = kCheckpointFormatName;
  j["version"] = m.version;
  j["model"] = model_json(m.model);
  const CheckpointLayout& l = m.layout;
  j["layout"] = {{"world", l.world},
                 {"dp", l.dp},
                 {"tp", l.tp},
                 {"pp", l.pp},
                 {"virtual_pp", l.virtual_pp},
                 {"zero_stage", l.zero_stage},
                 {"sequence_parallel", l.sequence_parallel},
                 {"precision", std::string(dtype_name(l.precision))}};
  const TrainingProgress& p = m.progress;
  json progress = {{"step", p.step},
                   {"optimizer_steps", p.optimizer_steps},
                   {"lr", p.lr},
                   {"data",
                    {{"consumed_micro_batches", p.consumed_micro_batches},
                     {"micro_batch_size", p.micro_batch_size},
                     {"seq_len", p.seq_len},
                     {"shuffle", p.shuffle},
                     {"order_seed", p.data_seed}}},
                   {"rng", {{"seed", p.seed}, {"note", "no random state is drawn during training"}}}};
  if (p.loss_scaler) {
    const LossScaler::State& s = *p.loss_scaler;
    progress["loss_scaler"] = {{"scale", s.scale},
                               {"hysteresis_left", s.hysteresis_left},
                               {"iteration", s.iteration},
                               {"last_overflow_iteration", s.last_overflow_iteration},
                               {"skipped_steps", s.skipped_steps},
                               {"overflow_count", s.overflow_count}};
  }
  j["progress"] = progress;
  json tensors = json::array();
  std::map<std::string, Shape> shapes;
  for (const SavedTensor& t : m.tensors) {
    tensors.push_back({{"name", t.name}, {"shape", t.shape}});
    shapes[t.name] = t.shape;
  }
  j["tensors"] = tensors;
  j["files"] = m.files;
  json pieces = json::array();
  for (const SavedPiece& p : m.pieces) pieces.push_back(piece_json(p, shapes[p.tensor]));
  j["pieces"] = pieces;
  return j.dump(1);
}

Manifest manifest_from_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    TS_THROW(Error, "{}: not JSON ({}): the manifest is damaged; resume from another checkpoint",
             source, e.what());
  }
  TS_CHECK(j.is_object() && j.contains("format") && j["format"].is_string() &&
               j["format"].get<std::string>() == kCheckpointFormatName,
           "{}: not a tessera checkpoint manifest (no \"format\": \"{}\")", source,
           kCheckpointFormatName);
  Manifest m;
  m.version = field<int>(j, "version", source);
  TS_CHECK(m.version <= kCheckpointFormatVersion && m.version >= 1,
           "{}: checkpoint format version {}, but this tessera reads versions up to {}: use the "
           "tessera that wrote it, or a newer one",
           source, m.version, kCheckpointFormatVersion);
  const json model = field<json>(j, "model", source);
  m.model.n_layer = field<int>(model, "n_layer", source);
  m.model.n_head = field<int>(model, "n_head", source);
  m.model.n_embd = field<int>(model, "n_embd", source);
  m.model.vocab_size = field<int>(model, "vocab_size", source);
  m.model.block_size = field<int>(model, "block_size", source);
  const json l = field<json>(j, "layout", source);
  m.layout.world = field<int>(l, "world", source);
  m.layout.dp = field<int>(l, "dp", source);
  m.layout.tp = field<int>(l, "tp", source);
  m.layout.pp = field<int>(l, "pp", source);
  m.layout.virtual_pp = field<int>(l, "virtual_pp", source);
  m.layout.zero_stage = field<int>(l, "zero_stage", source);
  m.layout.sequence_parallel = field<bool>(l, "sequence_parallel", source);
  m.layout.precision = parse_dtype(field<std::string>(l, "precision", source));
  const json p = field<json>(j, "progress", source);
  m.progress.step = field<int64_t>(p, "step", source);
  m.progress.optimizer_steps = field<int64_t>(p, "optimizer_steps", source);
  m.progress.lr = field<double>(p, "lr", source);
  const json data = field<json>(p, "data", source);
  m.progress.consumed_micro_batches = field<int64_t>(data, "consumed_micro_batches", source);
  m.progress.micro_batch_size = field<int>(data, "micro_batch_size", source);
  m.progress.seq_len = field<int>(data, "seq_len", source);
  m.progress.shuffle = field<bool>(data, "shuffle", source);
  m.progress.data_seed = field<uint64_t>(data, "order_seed", source);
  m.progress.seed = field<uint64_t>(field<json>(p, "rng", source), "seed", source);
  if (p.contains("loss_scaler")) {
    const json& s = p.at("loss_scaler");
    LossScaler::State st;
    st.scale = field<double>(s, "scale", source);
    st.hysteresis_left = field<int>(s, "hysteresis_left", source);
    st.iteration = field<int64_t>(s, "iteration", source);
    st.last_overflow_iteration = field<int64_t>(s, "last_overflow_iteration", source);
    st.skipped_steps = field<int64_t>(s, "skipped_steps", source);
    st.overflow_count = field<int64_t>(s, "overflow_count", source);
    m.progress.loss_scaler = st;
  }
  for (const json& t : field<json>(j, "tensors", source)) {
    SavedTensor tensor{field<std::string>(t, "name", source), field<Shape>(t, "shape", source)};
    int64_t numel = 1;
    for (int64_t d : tensor.shape) {
      TS_CHECK(d > 0 && d <= kMaxCount / numel,
               "{}: tensor '{}' has shape {}, not a shape of positive sizes: the manifest is "
               "damaged",
               source, tensor.name, shape_str(tensor.shape));
      numel *= d;
    }
    TS_CHECK(!tensor.shape.empty() && tensor.shape.size() <= 2,
             "{}: tensor '{}' has {} dimensions; checkpoints hold vectors and matrices", source,
             tensor.name, tensor.shape.size());
    m.tensors.push_back(std::move(tensor));
  }
  m.files = field<std::vector<std::string>>(j, "files", source);
  std::map<std::string, Shape> shapes;
  for (const SavedTensor& t : m.tensors) shapes[t.name] = t.shape;
  for (const json& pj : field<json>(j, "pieces", source)) {
    SavedPiece piece = piece_from_json(pj, source);
    const auto it = shapes.find(piece.tensor);
    TS_CHECK(it != shapes.end(), "{}: a piece names tensor '{}', which the table lacks", source,
             piece.tensor);
    const Box whole{0, view_rows(it->second), 0, view_cols(it->second)};
    TS_CHECK(intersect(piece.box, whole).numel() == piece.box.numel(),
             "{}: a piece of '{}' reaches outside its shape: the manifest is damaged", source,
             piece.tensor);
    TS_CHECK(std::find(m.files.begin(), m.files.end(), piece.file) != m.files.end(),
             "{}: a piece of '{}' is in '{}', which the file list lacks", source, piece.tensor,
             piece.file);
    m.pieces.push_back(std::move(piece));
  }
  return m;
}

void check_coverage(const Manifest& m) {
  std::map<std::pair<std::string, TensorKind>, std::vector<const SavedPiece*>> by_tensor;
  for (const SavedPiece& p : m.pieces) by_tensor[{p.tensor, p.kind}].push_back(&p);
  std::vector<TensorKind> kinds;
  for (const auto& [key, pieces] : by_tensor) {
    if (std::find(kinds.begin(), kinds.end(), key.second) == kinds.end()) {
      kinds.push_back(key.second);
    }
  }
  for (const SavedTensor& t : m.tensors) {
    const int64_t cols = view_cols(t.shape), numel = view_rows(t.shape) * cols;
    for (TensorKind kind : kinds) {
      const auto it = by_tensor.find({t.name, kind});
      TS_CHECK(it != by_tensor.end(), "checkpoint: no {} piece of tensor '{}': a shard is missing",
               tensor_kind_name(kind), t.name);
      std::vector<bool> seen(static_cast<size_t>(numel), false);
      int64_t covered = 0;
      for (const SavedPiece* p : it->second) {
        for (int64_t r = p->box.row; r < p->box.row + p->box.rows; ++r) {
          for (int64_t c = p->box.col; c < p->box.col + p->box.cols; ++c) {
            const auto at = static_cast<size_t>(r * cols + c);
            TS_CHECK(!seen[at], "checkpoint: element ({}, {}) of {} '{}' is in two pieces", r, c,
                     tensor_kind_name(kind), t.name);
            seen[at] = true;
          }
        }
        covered += p->box.numel();
      }
      TS_CHECK(covered == numel,
               "checkpoint: the {} pieces of '{}' cover {} of its {} elements: a shard is missing",
               tensor_kind_name(kind), t.name, covered, numel);
    }
  }
}

std::string checkpoint_folder_name(int64_t step) { return fmt::format("step-{:08d}", step); }

}  // namespace tessera::engine
