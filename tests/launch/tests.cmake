# launch/: the real `tessera` command on bad input (exit 1, one `error: ` line, never a crash)
# and a 3-step happy path. Included by tests/CMakeLists.txt.
if(TARGET tessera)
  add_test(NAME cli_errors COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/cli_errors.sh $<TARGET_FILE:tessera>)
  set_tests_properties(cli_errors PROPERTIES LABELS unit TIMEOUT 120)
endif()
