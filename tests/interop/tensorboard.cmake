# Interop with TensorBoard (issue 3, metrics): the event files tessera writes must load in
# TensorBoard's own reader (CRCs checked) and EventAccumulator with the values written.
# Included from tests/interop/tests.cmake.
#
# Needs the `tensorboard` package in the Python ctest runs; the script exits 77 (reported as
# skipped) without it, so CI need not install it. Point TESSERA_PYTHON at a virtual
# environment's python (pip install tensorboard) to run it for real.

add_executable(interop_write_events ${CMAKE_CURRENT_LIST_DIR}/write_events.cc)
target_link_libraries(interop_write_events PRIVATE tessera_engine)

find_program(TESSERA_PYTHON NAMES python3 python
             DOC "Python for tests/interop (tests whose packages are missing report skipped)")
if(TESSERA_PYTHON)
  add_test(NAME interop_tensorboard_events
           COMMAND ${TESSERA_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/tensorboard_check.py
                   $<TARGET_FILE:interop_write_events>
                   ${CMAKE_CURRENT_BINARY_DIR}/interop_tensorboard)
  set_tests_properties(interop_tensorboard_events PROPERTIES
                       SKIP_RETURN_CODE 77 LABELS interop TIMEOUT 120)
endif()
