// Shared main for every test binary: quiet logging unless TESSERA_LOG_LEVEL asks otherwise.
#include <gtest/gtest.h>

#include <cstdlib>

#include "runtime/core/logging.h"

int main(int argc, char** argv) {
  setenv("TESSERA_LOG_LEVEL", "warn", /*overwrite=*/0);
  tessera::init_logging();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
