// The settings registry (environment override, default, undeclared names) and the error
// macros (messages carry file:line and, for TS_CHECK_EQ, both values).
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "runtime/core/error.h"
#include "runtime/core/settings.h"

namespace {
// Variables only this test reads, so no real setting is disturbed.
TS_SETTING("TESSERA_TEST_SETTINGS_STR", "hello", "string setting used by settings_test");
TS_SETTING("TESSERA_TEST_SETTINGS_INT", "42", "integer setting used by settings_test");
}  // namespace

namespace tessera {
namespace {

// Sets an environment variable for one scope, then removes it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { setenv(name, value, 1); }
  ~ScopedEnv() { unsetenv(name_); }

 private:
  const char* name_;
};

TEST(SettingsTest, DefaultWhenUnset) {
  unsetenv("TESSERA_TEST_SETTINGS_STR");
  unsetenv("TESSERA_TEST_SETTINGS_INT");
  EXPECT_EQ(setting_value("TESSERA_TEST_SETTINGS_STR"), "hello");
  EXPECT_EQ(setting_int("TESSERA_TEST_SETTINGS_INT"), 42);
}

TEST(SettingsTest, EnvironmentOverridesDefault) {
  {
    ScopedEnv env("TESSERA_TEST_SETTINGS_STR", "world");
    EXPECT_EQ(setting_value("TESSERA_TEST_SETTINGS_STR"), "world");
  }
  {
    ScopedEnv env("TESSERA_TEST_SETTINGS_INT", "-17");
    EXPECT_EQ(setting_int("TESSERA_TEST_SETTINGS_INT"), -17);
  }
  EXPECT_EQ(setting_value("TESSERA_TEST_SETTINGS_STR"), "hello");
}

TEST(SettingsTest, NonIntegerThrowsInvalidArgument) {
  for (const char* bad : {"", "12abc", "abc", "1.5"}) {
    ScopedEnv env("TESSERA_TEST_SETTINGS_INT", bad);
    EXPECT_THROW(setting_int("TESSERA_TEST_SETTINGS_INT"), InvalidArgument) << "'" << bad << "'";
  }
}

TEST(SettingsTest, UndeclaredThrows) {
  unsetenv("TESSERA_TEST_NEVER_DECLARED");
  try {
    setting_value("TESSERA_TEST_NEVER_DECLARED");
    FAIL() << "reading an undeclared setting did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("TESSERA_TEST_NEVER_DECLARED"), std::string::npos);
  }
}

TEST(SettingsTest, RegistryListsDeclarationsOnce) {
  const int before = static_cast<int>(all_settings().size());
  // Declaring an existing variable again returns its index and adds nothing.
  const int again = declare_setting({"TESSERA_TEST_SETTINGS_STR", "other", "dup"});
  EXPECT_EQ(static_cast<int>(all_settings().size()), before);
  ASSERT_LT(again, before);
  EXPECT_EQ(all_settings()[again].variable, "TESSERA_TEST_SETTINGS_STR");
  EXPECT_EQ(all_settings()[again].default_value, "hello");  // the first declaration wins

  bool found_int = false, found_log = false;
  for (const Setting& s : all_settings()) {
    found_int |= s.variable == "TESSERA_TEST_SETTINGS_INT" && s.default_value == "42" &&
                 !s.help.empty();
    found_log |= s.variable == "TESSERA_LOG_LEVEL";  // declared by core/logging.cc
  }
  EXPECT_TRUE(found_int);
  EXPECT_TRUE(found_log);
}

TEST(ErrorTest, CheckMessageHasFileLineAndFormattedText) {
  int line = 0;
  try {
    line = __LINE__ + 1;
    TS_CHECK(1 + 1 == 3, "arithmetic is broken: got {} want {}", 2, 3);
    FAIL() << "TS_CHECK did not throw";
  } catch (const InvalidArgument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("arithmetic is broken: got 2 want 3"), std::string::npos) << msg;
    // where() trims the path to the part below the repository root.
    EXPECT_NE(msg.find("[tests/core/settings_test.cc:" + std::to_string(line) + "]"),
              std::string::npos)
        << msg;
  }
}

TEST(ErrorTest, CheckPassingDoesNotThrowAndEvaluatesOnce) {
  int calls = 0;
  EXPECT_NO_THROW(TS_CHECK(++calls == 1, "never"));
  EXPECT_EQ(calls, 1);
}

TEST(ErrorTest, CheckEqPrintsBothValuesAsInternalError) {
  const int a = 3, b = 4;
  try {
    TS_CHECK_EQ(a, b, "shapes disagree");
    FAIL() << "TS_CHECK_EQ did not throw";
  } catch (const InvalidArgument&) {
    FAIL() << "an internal invariant must not look like a user error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("shapes disagree: a = 3 but b = 4"), std::string::npos) << msg;
    EXPECT_NE(msg.find("tests/core/settings_test.cc:"), std::string::npos) << msg;
  }
}

TEST(ErrorTest, ThrowPicksTheType) {
  EXPECT_THROW(TS_THROW(CommError, "peer {} died", 3), CommError);
  EXPECT_THROW(TS_THROW(NotCompiled, "no"), Error);
  EXPECT_THROW(TS_THROW(CudaError, "no"), std::runtime_error);
}

}  // namespace
}  // namespace tessera
