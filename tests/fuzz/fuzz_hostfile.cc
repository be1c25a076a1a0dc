// libFuzzer harness: `tessera launch`'s outside input: the DeepSpeed-style hostfile, the
// --include / --exclude host specs, and the mpirun command built from them.
//
// Input: NUL-separated parts: hostfile text, include spec, exclude spec, and a last part
// whose first byte (as int8) is -n. Missing parts are empty (and -n is 2).
// Passing: each step succeeds, or a tessera::Error says why not.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "launch/commands.h"
#include "runtime/core/error.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

void check_hosts(const std::vector<tessera::launch::HostSlots>& hosts) {
  for (const auto& h : hosts) {
    TS_FUZZ_EXPECT(!h.host.empty() && h.slots >= 1, "host '%s' slots %d", h.host.c_str(), h.slots);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  std::vector<std::string> parts =
      fuzz::split(std::string_view(reinterpret_cast<const char*>(data), size), '\0');
  parts.resize(std::max<size_t>(parts.size(), 4));
  const std::string& hostfile =
      fuzz::write_input_file(reinterpret_cast<const uint8_t*>(parts[0].data()), parts[0].size());

  std::vector<launch::HostSlots> hosts;
  try {
    hosts = launch::parse_hostfile(hostfile);
    TS_FUZZ_EXPECT(!hosts.empty(), "no hosts and no error");
    check_hosts(hosts);
  } catch (const Error&) {
    hosts = {{"a", 4}, {"b", 2}, {"c", 1}};  // still exercise the specs on their own
  }
  for (const auto& [include, exclude] :
       {std::pair{parts[1], parts[2]}, std::pair{parts[1], std::string()},
        std::pair{std::string(), parts[2]}}) {
    try {
      check_hosts(launch::filter_hosts(hosts, include, exclude));
    } catch (const Error&) {
    }
  }

  launch::LaunchOptions opts;
  opts.ranks = parts[3].empty() ? 2 : static_cast<int8_t>(parts[3][0]);
  opts.hostfile = hostfile;
  opts.include = parts[1];
  opts.exclude = parts[2];
  opts.command = {"tessera", "train", "--config", "c.json"};
  try {
    const std::vector<std::string> cmd = launch::mpirun_command(opts);
    TS_FUZZ_EXPECT(cmd.size() >= 3 + opts.command.size(), "%zu words", cmd.size());
  } catch (const Error&) {
  }
  return 0;
}
