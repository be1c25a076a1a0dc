#include "runtime/core/settings.h"

#include <cstdlib>
#include <mutex>

#include "runtime/core/error.h"

namespace tessera {
namespace {
std::vector<Setting>& registry() {
  static std::vector<Setting> r;
  return r;
}
std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
}  // namespace

int declare_setting(Setting s) {
  std::lock_guard lock(registry_mutex());
  for (size_t i = 0; i < registry().size(); ++i) {
    if (registry()[i].variable == s.variable) return static_cast<int>(i);
  }
  registry().push_back(std::move(s));
  return static_cast<int>(registry().size() - 1);
}

const std::vector<Setting>& all_settings() { return registry(); }

std::string setting_value(const std::string& variable) {
  if (const char* v = std::getenv(variable.c_str())) return v;
  std::lock_guard lock(registry_mutex());
  for (const Setting& s : registry()) {
    if (s.variable == variable) return s.default_value;
  }
  TS_THROW(Error, "setting {} was read but never declared with TS_SETTING", variable);
}

long setting_int(const std::string& variable) {
  const std::string v = setting_value(variable);
  char* end = nullptr;
  const long x = std::strtol(v.c_str(), &end, 10);
  TS_CHECK(!v.empty() && end != nullptr && *end == '\0', "{}='{}' is not an integer", variable, v);
  return x;
}

}  // namespace tessera
