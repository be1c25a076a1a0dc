// Settings read from the environment, declared once (name, variable, default, help) so that
// `tessera env` can list every one of them with its current value.
#pragma once

#include <string>
#include <vector>

namespace tessera {

struct Setting {
  std::string variable;  // e.g. TESSERA_LOG_LEVEL
  std::string default_value;
  std::string help;
};

// Declares a setting; returns its index. Used through TS_SETTING below, at namespace scope.
int declare_setting(Setting s);
const std::vector<Setting>& all_settings();

// The variable's value from the environment, or the declared default.
std::string setting_value(const std::string& variable);
long setting_int(const std::string& variable);

}  // namespace tessera

#define TS_SETTING_CONCAT2(a, b) a##b
#define TS_SETTING_CONCAT(a, b) TS_SETTING_CONCAT2(a, b)
#define TS_SETTING(variable, default_value, help) \
  static const int TS_SETTING_CONCAT(ts_setting_, __LINE__) = \
      ::tessera::declare_setting({variable, default_value, help})
