// run_agreed on thread ranks: nothing happens when no rank fails; when some ranks fail, every
// rank throws the lowest failing rank's message with its kind (the failing rank its own
// exception), and the group stays usable afterwards (no rank is left inside a collective).
#include "parallel/comm/agree.h"

#include <gtest/gtest.h>

#include <mutex>
#include <string>
#include <vector>

#include "parallel/comm/thread_group.h"
#include "runtime/core/error.h"

namespace tessera::parallel {
namespace {

struct Outcome {
  std::string kind;  // "none", "invalid", "comm", "error"
  std::string message;
};

std::vector<Outcome> run(int world, const std::function<void(int rank)>& fn) {
  std::vector<Outcome> out(world);
  spawn_ranks(world, [&](ProcessGroup& group) {
    Outcome& o = out[group.rank()];
    try {
      run_agreed(group, [&] { fn(group.rank()); });
      o.kind = "none";
    } catch (const InvalidArgument& e) {
      o = {"invalid", e.what()};
    } catch (const CommError& e) {
      o = {"comm", e.what()};
    } catch (const std::exception& e) {  // Error on the peers, the original on the root
      o = {"error", e.what()};
    }
    // The group is still in step: a collective after the agreement completes.
    float x = 1.0f;
    group.all_reduce(&x, 1, DType::F32)->wait();
    EXPECT_EQ(x, static_cast<float>(group.size()));
  });
  return out;
}

TEST(RunAgreed, NoFailureNoThrow) {
  for (int world : {1, 2, 5}) {
    for (const Outcome& o : run(world, [](int) {})) EXPECT_EQ(o.kind, "none");
  }
}

TEST(RunAgreed, EveryRankThrowsTheLowestFailingRanksMessageAndKind) {
  const std::string long_text(1001, 'x');  // not a multiple of the 4-byte words it travels in
  const std::vector<Outcome> out = run(4, [&](int rank) {
    if (rank == 1) throw InvalidArgument("rank 1: bad slice " + long_text);
    if (rank == 3) throw std::runtime_error("rank 3: something else");
  });
  for (const Outcome& o : out) {
    EXPECT_EQ(o.kind, "invalid");
    EXPECT_EQ(o.message, "rank 1: bad slice " + long_text);
  }
  const std::vector<Outcome> other = run(3, [](int rank) {
    if (rank == 2) throw std::runtime_error("rank 2 failed");
  });
  for (const Outcome& o : other) {
    EXPECT_EQ(o.kind, "error");
    EXPECT_EQ(o.message, "rank 2 failed");
  }
}

}  // namespace
}  // namespace tessera::parallel
