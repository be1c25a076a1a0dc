// The launcher's pure parts: hostfiles, --include/--exclude, the mpirun command line, and
// rank detection from launcher variables.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "launch/commands.h"
#include "launch/rank_env.h"
#include "runtime/core/error.h"

namespace tessera::launch {
namespace {

std::string write_hostfile(const std::string& text) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("tessera_hostfile_" + std::to_string(::getpid()) + "_" +
                     std::to_string(std::hash<std::string>{}(text)));
  std::ofstream(path) << text;
  return path.string();
}

std::string joined(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : " ") + s;
  return out;
}

TEST(Hostfile, ParsesSlotsCommentsAndBlankLines) {
  const auto hosts = parse_hostfile(write_hostfile(
      "# cluster\nworker-1 slots=4\n\n  worker-2 slots=2   # fast one\nworker-3\n"));
  ASSERT_EQ(hosts.size(), 3u);
  EXPECT_EQ(hosts[0].host, "worker-1");
  EXPECT_EQ(hosts[0].slots, 4);
  EXPECT_EQ(hosts[1].slots, 2);
  EXPECT_EQ(hosts[2].slots, 1);  // no slots= means one
}

TEST(Hostfile, RejectsDuplicatesBadSlotsAndEmptyFiles) {
  EXPECT_THROW(parse_hostfile(write_hostfile("a slots=2\nb slots=1\na slots=1\n")), InvalidArgument);
  EXPECT_THROW(parse_hostfile(write_hostfile("a slots=zero\n")), InvalidArgument);
  EXPECT_THROW(parse_hostfile(write_hostfile("a cores=2\n")), InvalidArgument);
  EXPECT_THROW(parse_hostfile(write_hostfile("a slots=2 extra\n")), InvalidArgument);
  EXPECT_THROW(parse_hostfile(write_hostfile("# nothing\n\n")), InvalidArgument);
  EXPECT_THROW(parse_hostfile("/nonexistent/hostfile"), InvalidArgument);
  try {
    parse_hostfile(write_hostfile("a\nb\na\n"));
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("listed twice"), std::string::npos) << e.what();
  }
}

TEST(Hostfile, IncludeAndExclude) {
  const std::vector<HostSlots> hosts = {{"a", 4}, {"b", 2}, {"c", 1}};
  auto only_b = filter_hosts(hosts, "b", "");
  ASSERT_EQ(only_b.size(), 1u);
  EXPECT_EQ(only_b[0].host, "b");
  auto a_two_slots = filter_hosts(hosts, "a:0,1@c", "");
  ASSERT_EQ(a_two_slots.size(), 2u);
  EXPECT_EQ(a_two_slots[0].slots, 2);
  auto without_b = filter_hosts(hosts, "", "b");
  EXPECT_EQ(without_b.size(), 2u);
  auto a_minus_one = filter_hosts(hosts, "", "a:3");
  EXPECT_EQ(a_minus_one[0].slots, 3);
  EXPECT_THROW(filter_hosts(hosts, "zzz", ""), InvalidArgument);
  EXPECT_THROW(filter_hosts(hosts, "a", "b"), InvalidArgument);
  EXPECT_THROW(filter_hosts(hosts, "", "a@b@c"), InvalidArgument);
}

TEST(MpirunCommand, AddsTheFlagsUsersForget) {
  LaunchOptions o;
  o.ranks = 64;  // more than any machine here has cores
  o.command = {"tessera", "train", "-c", "x.json"};
  const std::string cmd = joined(mpirun_command(o));
  EXPECT_NE(cmd.find("mpirun -np 64"), std::string::npos) << cmd;
  EXPECT_NE(cmd.find("--oversubscribe"), std::string::npos) << cmd;
  EXPECT_NE(cmd.find("--bind-to none"), std::string::npos) << cmd;
  EXPECT_EQ(cmd.find("--allow-run-as-root") != std::string::npos, ::geteuid() == 0) << cmd;
  EXPECT_NE(cmd.find("tessera train -c x.json"), std::string::npos) << cmd;
}

TEST(MpirunCommand, HostfileBecomesAHostList) {
  LaunchOptions o;
  o.ranks = 3;
  o.hostfile = write_hostfile("n1 slots=2\nn2 slots=2\n");
  o.command = {"tessera", "env"};
  const std::string cmd = joined(mpirun_command(o));
  EXPECT_NE(cmd.find("--host n1:2,n2:2"), std::string::npos) << cmd;
  EXPECT_EQ(cmd.find("--oversubscribe"), std::string::npos) << cmd;  // 3 ranks fit 4 slots
  o.command.clear();
  EXPECT_THROW(mpirun_command(o), InvalidArgument);
  o.command = {"x"};
  o.ranks = 0;
  EXPECT_THROW(mpirun_command(o), InvalidArgument);
}

class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    setenv(name, value, 1);
  }
  ~ScopedEnv() { had_ ? setenv(name_, old_.c_str(), 1) : unsetenv(name_); }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

TEST(RankEnv, ReadsLaunchersInOrder) {
  // The test may itself run under mpirun: clear what would shadow the variables set here.
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID",
                        "SLURM_NTASKS", "PMI_RANK", "PMI_SIZE", "RANK", "WORLD_SIZE"}) {
    unsetenv(v);
  }
  EXPECT_EQ(detect_rank_env().world, 1);
  {
    ScopedEnv r("RANK", "3"), w("WORLD_SIZE", "8"), l("LOCAL_RANK", "1");
    const RankEnv env = detect_rank_env();
    EXPECT_EQ(env.rank, 3);
    EXPECT_EQ(env.world, 8);
    EXPECT_EQ(env.local_rank, 1);
    EXPECT_NE(env.source.find("torchrun"), std::string::npos);
    ScopedEnv sr("SLURM_PROCID", "5"), sw("SLURM_NTASKS", "6");
    EXPECT_EQ(detect_rank_env().rank, 5);  // Slurm is read before torchrun
  }
  {
    ScopedEnv r("RANK", "8"), w("WORLD_SIZE", "8");
    EXPECT_THROW(detect_rank_env(), InvalidArgument);
  }
  {
    ScopedEnv r("RANK", "two"), w("WORLD_SIZE", "8");
    EXPECT_THROW(detect_rank_env(), InvalidArgument);
  }
}

}  // namespace
}  // namespace tessera::launch
