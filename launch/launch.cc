// `tessera launch`: starts ranks through mpirun with the flags a user would otherwise have to
// remember, and a DeepSpeed-style hostfile.
#include <unistd.h>

#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "launch/commands.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/core/settings.h"

namespace tessera::launch {
namespace {

// Far above any real host (mpirun places ranks, one per slot), far below INT_MAX.
constexpr long kMaxSlots = 1 << 20;

}  // namespace

std::vector<HostSlots> parse_hostfile(const std::string& path) {
  std::ifstream in(path);
  TS_CHECK(in.good(), "cannot read hostfile '{}': check the path", path);
  std::vector<HostSlots> hosts;
  std::map<std::string, int> seen;
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    if (const size_t hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream words(line);
    std::string host, slots_word;
    if (!(words >> host)) continue;  // blank or comment
    HostSlots h{host, 1};
    if (words >> slots_word) {
      TS_CHECK(slots_word.rfind("slots=", 0) == 0,
               "{}:{}: expected 'host slots=N', got '{}'", path, lineno, line);
      const std::string n = slots_word.substr(6);
      char* end = nullptr;
      const long v = std::strtol(n.c_str(), &end, 10);
      // Capped so the int cannot wrap: slots=4294967296 must not become 0 slots.
      TS_CHECK(!n.empty() && *end == '\0' && v >= 1 && v <= kMaxSlots,
               "{}:{}: slots must be an integer in [1, {}], got '{}'", path, lineno, kMaxSlots, n);
      h.slots = static_cast<int>(v);
    }
    std::string extra;
    TS_CHECK(!(words >> extra), "{}:{}: unexpected '{}' after the slots", path, lineno, extra);
    TS_CHECK(seen.count(host) == 0, "{}:{}: host '{}' is listed twice (first on line {})", path,
             lineno, host, seen[host]);
    seen[host] = lineno;
    hosts.push_back(h);
  }
  TS_CHECK(!hosts.empty(), "hostfile '{}' lists no hosts", path);
  return hosts;
}

// --include / --exclude take DeepSpeed's form: "host1@host2" or "host1:0,1@host2"; slot
// lists select that many slots (mpirun places ranks, not devices).
std::vector<HostSlots> filter_hosts(std::vector<HostSlots> hosts, const std::string& include,
                                    const std::string& exclude) {
  auto parse = [](const std::string& spec) {
    std::map<std::string, int> out;  // host -> slots named (0 = all)
    std::stringstream ss(spec);
    for (std::string item; std::getline(ss, item, '@');) {
      if (item.empty()) continue;
      const size_t colon = item.find(':');
      int count = 0;
      if (colon != std::string::npos) {
        std::stringstream slots(item.substr(colon + 1));
        for (std::string s; std::getline(slots, s, ',');) ++count;
      }
      out[item.substr(0, colon)] = count;
    }
    return out;
  };
  TS_CHECK(include.empty() || exclude.empty(), "--include and --exclude cannot be combined");
  const auto inc = parse(include), exc = parse(exclude);
  for (const auto& [host, n] : inc) {
    bool found = false;
    for (const HostSlots& h : hosts) found = found || h.host == host;
    TS_CHECK(found, "--include names host '{}', which the hostfile does not list", host);
  }
  std::vector<HostSlots> out;
  for (HostSlots h : hosts) {
    if (!inc.empty()) {
      auto it = inc.find(h.host);
      if (it == inc.end()) continue;
      if (it->second > 0) h.slots = std::min(h.slots, it->second);
    }
    if (auto it = exc.find(h.host); it != exc.end()) {
      if (it->second == 0) continue;
      h.slots -= it->second;
      if (h.slots <= 0) continue;
    }
    out.push_back(h);
  }
  TS_CHECK(!out.empty(), "--include/--exclude leave no hosts to run on");
  return out;
}

std::vector<std::string> mpirun_command(const LaunchOptions& opts) {
  TS_CHECK(opts.ranks >= 1, "-n must be at least 1, got {}", opts.ranks);
  TS_CHECK(!opts.command.empty(), "nothing to launch: put the command after --, e.g. "
           "`tessera launch -n 2 -- tessera train --config c.json`");
  std::vector<std::string> cmd = {opts.mpirun, "-np", std::to_string(opts.ranks)};
  int64_t slots = std::thread::hardware_concurrency();  // summed over hosts: int64, not int
  if (!opts.hostfile.empty()) {
    const auto hosts = filter_hosts(parse_hostfile(opts.hostfile), opts.include, opts.exclude);
    std::string list;
    slots = 0;
    for (const HostSlots& h : hosts) {
      list += (list.empty() ? "" : ",") + h.host + ":" + std::to_string(h.slots);
      slots += h.slots;
    }
    cmd.insert(cmd.end(), {"--host", list});
  } else {
    TS_CHECK(opts.include.empty() && opts.exclude.empty(), "--include/--exclude need --hostfile");
  }
  if (opts.ranks > slots) cmd.push_back("--oversubscribe");
  if (::geteuid() == 0) cmd.push_back("--allow-run-as-root");
  // Each rank runs its own OpenMP threads: mpirun's default core binding would pin all of
  // a rank's threads to one core.
  cmd.insert(cmd.end(), {"--bind-to", "none"});
  // Every tessera setting the caller set (the list `tessera env` prints) reaches the ranks.
  std::vector<std::string> forwarded = {"OMP_NUM_THREADS", "PATH", "LD_LIBRARY_PATH"};
  for (const Setting& s : all_settings()) forwarded.push_back(s.variable);
  for (const std::string& var : forwarded) {
    if (std::getenv(var.c_str()) != nullptr) cmd.insert(cmd.end(), {"-x", var});
  }
  for (const std::string& arg : opts.command) cmd.push_back(arg);
  return cmd;
}

int run_launch(const LaunchOptions& opts) {
  const std::vector<std::string> cmd = mpirun_command(opts);
  std::string shown;
  for (const auto& a : cmd) shown += (shown.empty() ? "" : " ") + a;
  log_rank0("launch: {}", shown);
  if (opts.dry_run) return 0;
  std::vector<char*> argv;
  for (const auto& a : cmd) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::fflush(nullptr);
  ::execvp(argv[0], argv.data());
  TS_THROW(InvalidArgument, "cannot run '{}': {} (install openmpi-bin or pass --mpirun PATH)",
           opts.mpirun, std::strerror(errno));
}

}  // namespace tessera::launch
