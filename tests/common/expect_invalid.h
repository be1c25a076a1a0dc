// A test helper shared by the test binaries: a call that must fail with a named problem.
#pragma once

#include <string>

#include <gtest/gtest.h>

#include "runtime/core/error.h"

namespace tessera::test {

// Expects `fn` to throw InvalidArgument whose message contains `part`.
template <typename Fn>
void expect_invalid(Fn fn, const std::string& part) {
  try {
    fn();
    ADD_FAILURE() << "no error, wanted: " << part;
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

}  // namespace tessera::test
