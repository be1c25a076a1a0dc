#include "runtime/engine/pipeline.h"

#include <cstring>

#include <fmt/format.h>

#include "parallel/pp/partition.h"
#include "runtime/core/error.h"

namespace tessera::engine {

namespace pp = tessera::parallel::pp;

std::vector<int> pipeline_boundaries(const TrainConfig& config) {
  const models::GPTConfig& m = config.model;
  const int parts = config.pipeline_parallel * config.virtual_pipeline;
  const int64_t C = m.n_embd;
  const int64_t vocab = models::padded_vocab(m.vocab_size, config.tensor_parallel);
  // GPT-2's parameters per block (whole: tensor parallelism divides every block alike).
  std::vector<int64_t> costs(static_cast<size_t>(m.n_layer), 12 * C * C + 13 * C);
  costs.front() += vocab * C + int64_t{m.block_size} * C;
  costs.back() += vocab * C + 2 * C;
  return pp::partition(pp::parse_partition_method(config.pipeline_partition), costs, parts);
}

models::PipelinePart pipeline_part(const TrainConfig& config, int stage) {
  const std::vector<int> bounds = pipeline_boundaries(config);
  models::PipelinePart part;
  for (int c = 0; c < config.virtual_pipeline; ++c) {
    const int k = c * config.pipeline_parallel + stage;
    part.chunks.emplace_back(bounds[k], bounds[k + 1]);
  }
  return part;
}

void run_program(const pp::StageProgram& program, StepRunner& runner, TraceRecorder* trace) {
  const std::vector<int> slots = pp::assign_slots(program);
  std::vector<bool> last_of_chunk(program.size(), false);
  std::vector<bool> seen;
  for (size_t i = program.size(); i-- > 0;) {
    const pp::Step& s = program[i];
    if (s.kind != pp::StepKind::Backward) continue;
    if (seen.size() <= static_cast<size_t>(s.chunk)) seen.resize(s.chunk + 1, false);
    if (!seen[s.chunk]) last_of_chunk[i] = seen[s.chunk] = true;
  }
  TraceRecorder off;  // disabled: spans cost a branch
  TraceRecorder& rec = trace != nullptr ? *trace : off;
  for (size_t i = 0; i < program.size(); ++i) {
    const pp::Step& s = program[i];
    const int m = s.micro_batch, c = s.chunk;
    switch (s.kind) {
      case pp::StepKind::Forward: {
        const auto span = rec.span(fmt::format("F{}", m), kTraceForward, m, c);
        runner.forward(s, slots[i]);
        break;
      }
      case pp::StepKind::Backward: {
        const auto span = rec.span(fmt::format("B{}", m), kTraceBackward, m, c);
        runner.backward(s, slots[i], last_of_chunk[i]);
        break;
      }
      case pp::StepKind::RecvActivation: {
        const auto span = rec.span(fmt::format("recv activation {}", m), kTraceRecv, m, c);
        runner.recv_activation(s, slots.at(i + 1));
        break;
      }
      case pp::StepKind::SendActivation: {
        const auto span = rec.span(fmt::format("send activation {}", m), kTraceSend, m, c);
        runner.send_activation(s, slots.at(i - 1));
        break;
      }
      case pp::StepKind::RecvGrad: {
        const auto span = rec.span(fmt::format("recv gradient {}", m), kTraceRecv, m, c);
        runner.recv_grad(s);
        break;
      }
      case pp::StepKind::SendGrad: {
        const auto span = rec.span(fmt::format("send gradient {}", m), kTraceSend, m, c);
        runner.send_grad(s);
        break;
      }
      case pp::StepKind::ReduceGrads: {
        const auto span = rec.span("reduce gradients", kTraceCollective);
        runner.reduce_grads();
        break;
      }
      case pp::StepKind::OptimizerStep: {
        const auto span = rec.span("optimizer", kTraceOptimizer);
        runner.optimizer_step();
        break;
      }
    }
  }
}

StageLinks::StageLinks(parallel::ProcessGroup& pipeline) : group_(pipeline) {}

StageLinks::~StageLinks() {
  bool in_flight = false;
  for (const Pending& p : sends_) in_flight = in_flight || (p.work != nullptr && !p.work->is_completed());
  // The peers fail too, as they would once this rank is gone; a receive already copying
  // completes, an unmatched send fails, and only then are the buffers freed.
  if (in_flight) group_.abort("a pipeline stage ended with sends in flight");
  for (Pending& p : sends_) {
    if (p.work == nullptr) continue;
    try {
      p.work->wait();
    } catch (const std::exception&) {
      // The failure that ended the stage is being reported already.
    }
  }
}

void StageLinks::send(const float* data, size_t count, int dst, const std::string& what) {
  const size_t bytes = count * sizeof(float);
  Pending* slot = nullptr;
  for (Pending& p : sends_) {
    if (p.work != nullptr && !p.work->is_completed()) continue;
    if (p.work != nullptr) p.work->wait();  // rethrows a failed send
    p.work = nullptr;
    if (p.buffer.bytes() >= bytes) {
      slot = &p;
      break;
    }
  }
  if (slot == nullptr) {
    sends_.push_back({Storage(bytes, MemCategory::Comm, Device::cpu(), /*zero=*/false), nullptr});
    slot = &sends_.back();
  }
  if (bytes > 0) std::memcpy(slot->buffer.data(), data, bytes);
  parallel::SendRecvOptions opts;
  opts.what = what;
  slot->work = group_.send(slot->buffer.data(), count, DType::F32, dst, opts);
}

void StageLinks::recv(float* data, size_t count, int src, const std::string& what) {
  parallel::SendRecvOptions opts;
  opts.what = what;
  group_.recv(data, count, DType::F32, src, opts)->wait();
}

void StageLinks::wait_sends() {
  for (Pending& p : sends_) {
    if (p.work == nullptr) continue;
    parallel::WorkPtr work = std::move(p.work);
    work->wait();
  }
}

size_t StageLinks::buffer_bytes() const {
  size_t bytes = 0;
  for (const Pending& p : sends_) bytes += p.buffer.bytes();
  return bytes;
}

}  // namespace tessera::engine
