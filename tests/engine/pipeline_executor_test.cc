// The pipeline executor (run_program + StageLinks) without a model: fake stages on thread
// ranks pass numbers that say which micro-batch and virtual stage made them, so every schedule
// (GPipe, 1F1B, interleaved) is checked for the order of calls, each transfer's contents, the
// activation slots (a backward finds its own forward's activation) and the marking of each
// chunk's last backward.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "parallel/comm/thread_group.h"
#include "parallel/pp/schedule.h"
#include "runtime/engine/pipeline.h"

namespace tessera::engine {
namespace {

namespace pp = tessera::parallel::pp;

// What virtual stage k's forward of micro-batch m outputs, and its backward's input gradient.
float activation(int m, int k) { return 1000.0f * m + k; }
float gradient(int m, int k) { return -1000.0f * m - k; }

constexpr size_t kWidth = 3;  // elements per transfer

class FakeStages final : public StepRunner {
 public:
  FakeStages(const pp::Schedule& schedule, int rank, StageLinks& links)
      : s_(schedule), rank_(rank), links_(links) {}

  std::vector<pp::Step> calls;
  std::vector<pp::Step> last_backwards;
  std::vector<std::string> errors;

  void forward(const pp::Step& step, int slot) override {
    calls.push_back(step);
    const int k = vstage(step);
    if (k > 0) expect(in_[step.chunk], activation(step.micro_batch, k - 1), "forward's input", step);
    store_[{step.chunk, slot}] = step.micro_batch;
    out_[step.chunk].assign(kWidth, activation(step.micro_batch, k));
  }
  void backward(const pp::Step& step, int slot, bool last_of_chunk) override {
    calls.push_back(step);
    if (last_of_chunk) last_backwards.push_back(step);
    const int k = vstage(step);
    if (store_[{step.chunk, slot}] != step.micro_batch) {
      errors.push_back("backward of " + name(step) + " found another micro-batch in its slot");
    }
    if (k < last()) {
      expect(grad_in_[step.chunk], gradient(step.micro_batch, k + 1), "backward's input", step);
    }
    grad_out_[step.chunk].assign(kWidth, gradient(step.micro_batch, k));
  }
  void recv_activation(const pp::Step& step, int) override {
    calls.push_back(step);
    in_[step.chunk].assign(kWidth, 0.0f);
    links_.recv(in_[step.chunk].data(), kWidth, (rank_ + s_.stages - 1) % s_.stages, name(step));
  }
  void send_activation(const pp::Step& step, int) override {
    calls.push_back(step);
    links_.send(out_[step.chunk].data(), kWidth, (rank_ + 1) % s_.stages, name(step));
    out_[step.chunk].assign(kWidth, -1.0f);  // reused at once: the send must have copied
  }
  void recv_grad(const pp::Step& step) override {
    calls.push_back(step);
    grad_in_[step.chunk].assign(kWidth, 0.0f);
    links_.recv(grad_in_[step.chunk].data(), kWidth, (rank_ + 1) % s_.stages, name(step));
  }
  void send_grad(const pp::Step& step) override {
    calls.push_back(step);
    links_.send(grad_out_[step.chunk].data(), kWidth, (rank_ + s_.stages - 1) % s_.stages,
                name(step));
    grad_out_[step.chunk].assign(kWidth, -1.0f);
  }
  void reduce_grads() override {
    calls.push_back({pp::StepKind::ReduceGrads, -1, 0});
    links_.wait_sends();
  }
  void optimizer_step() override { calls.push_back({pp::StepKind::OptimizerStep, -1, 0}); }

 private:
  int vstage(const pp::Step& step) const { return pp::virtual_stage(rank_, step.chunk, s_.stages); }
  int last() const { return s_.stages * s_.chunks - 1; }
  std::string name(const pp::Step& step) const { return pp::step_name(step, s_.chunks); }
  void expect(const std::vector<float>& got, float want, const char* what, const pp::Step& step) {
    for (float x : got) {
      if (x != want) {
        errors.push_back(std::string(what) + " of " + name(step) + " on rank " +
                         std::to_string(rank_) + " is " + std::to_string(x) + ", expected " +
                         std::to_string(want));
        return;
      }
    }
  }

  const pp::Schedule& s_;
  int rank_;
  StageLinks& links_;
  std::map<int, std::vector<float>> in_, out_, grad_in_, grad_out_;
  std::map<std::pair<int, int>, int> store_;  // (chunk, slot) -> micro-batch held
};

void expect_runs(const pp::Schedule& schedule) {
  SCOPED_TRACE(schedule.name + " p=" + std::to_string(schedule.stages) + " m=" +
               std::to_string(schedule.micro_batches) + " v=" + std::to_string(schedule.chunks));
  const int p = schedule.stages;
  std::vector<std::vector<pp::Step>> calls(p), lasts(p);
  std::vector<std::vector<std::string>> errors(p);
  parallel::spawn_ranks(p, [&](parallel::ProcessGroup& group) {
    StageLinks links(group);
    FakeStages fake(schedule, group.rank(), links);
    run_program(schedule.programs[group.rank()], fake, nullptr);
    calls[group.rank()] = fake.calls;
    lasts[group.rank()] = fake.last_backwards;
    errors[group.rank()] = fake.errors;
  });
  for (int r = 0; r < p; ++r) {
    for (const std::string& e : errors[r]) ADD_FAILURE() << e;
    EXPECT_EQ(calls[r], schedule.programs[r]) << "rank " << r << ": the calls are not the program";
    // One last backward per chunk: the chunk's final Backward in the program.
    ASSERT_EQ(static_cast<int>(lasts[r].size()), schedule.chunks) << "rank " << r;
    for (const pp::Step& last : lasts[r]) {
      const auto& prog = schedule.programs[r];
      for (auto it = prog.rbegin(); it != prog.rend(); ++it) {
        if (it->kind == pp::StepKind::Backward && it->chunk == last.chunk) {
          EXPECT_EQ(*it, last) << "rank " << r << " chunk " << last.chunk;
          break;
        }
      }
    }
  }
}

TEST(PipelineExecutor, EverySchedulesCallsAndTransfersAreRight) {
  for (int p : {2, 3, 4}) {
    for (int m = 1; m <= 9; ++m) {
      expect_runs(pp::make_schedule("gpipe", p, m));
      expect_runs(pp::make_schedule("1f1b", p, m));
      if (m % p == 0) expect_runs(pp::make_schedule("interleaved", p, m, 2));
    }
  }
  expect_runs(pp::make_schedule("interleaved", 2, 4, 4));
}

TEST(PipelineExecutor, TraceHasASpanPerStep) {
  const pp::Schedule schedule = pp::make_schedule("1f1b", 2, 3);
  std::vector<size_t> spans(2);
  parallel::spawn_ranks(2, [&](parallel::ProcessGroup& group) {
    StageLinks links(group);
    FakeStages fake(schedule, group.rank(), links);
    TraceRecorder trace;
    trace.set_enabled(true);
    run_program(schedule.programs[group.rank()], fake, &trace);
    spans[group.rank()] = trace.spans().size();
    int forwards = 0;
    for (const TraceSpan& s : trace.spans()) forwards += s.category == kTraceForward;
    EXPECT_EQ(forwards, 3);
  });
  for (int r = 0; r < 2; ++r) EXPECT_EQ(spans[r], schedule.programs[r].size());
}

}  // namespace
}  // namespace tessera::engine
