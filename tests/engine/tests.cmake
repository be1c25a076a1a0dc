# Slow engine tests (minutes, not seconds): their own binary, labelled `slow`, so
# `ctest -LE slow` gives the quick loop. CI runs them.
add_executable(engine_slow_tests ${CMAKE_CURRENT_LIST_DIR}/slow/smoke_train_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/slow/mixed_precision_curve_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/slow/memory_accounting_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/slow/stage3_memory_test.cc)
target_link_libraries(engine_slow_tests PRIVATE tessera_test_main tessera_engine)
math(EXPR slow_timeout "900 * ${TESSERA_TEST_TIMEOUT_SCALE}")
gtest_discover_tests(engine_slow_tests
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}
  PROPERTIES LABELS slow TIMEOUT ${slow_timeout} ENVIRONMENT "TESSERA_SOURCE_DIR=${CMAKE_SOURCE_DIR}"
  DISCOVERY_TIMEOUT 60)
