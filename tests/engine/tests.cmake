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

# ZeRO-3's memory bound under mpirun, one rank per process (labelled slow and mpi).
if(TESSERA_WITH_MPI)
  add_executable(engine_mpi_stage3_memory ${CMAKE_CURRENT_LIST_DIR}/../parallel/mpi/mpi_main.cc
    ${CMAKE_CURRENT_LIST_DIR}/mpi/stage3_memory_mpi_test.cc)
  target_link_libraries(engine_mpi_stage3_memory PRIVATE GTest::gtest tessera_engine)
  target_include_directories(engine_mpi_stage3_memory PRIVATE ${CMAKE_SOURCE_DIR})
  foreach(np 2 4 8)
    add_test(NAME engine_mpi_stage3_memory_np${np}
             COMMAND ${CMAKE_CURRENT_LIST_DIR}/../parallel/mpi/run_mpi.sh ${np}
                     $<TARGET_FILE:engine_mpi_stage3_memory>)
    set_tests_properties(engine_mpi_stage3_memory_np${np} PROPERTIES LABELS "slow;mpi;multirank"
                         TIMEOUT ${slow_timeout})
  endforeach()

  # Tensor parallelism (with DP and ZeRO) against the single-rank run, under mpirun -np 4.
  add_executable(engine_mpi_tensor_parallel ${CMAKE_CURRENT_LIST_DIR}/../parallel/mpi/mpi_main.cc
    ${CMAKE_CURRENT_LIST_DIR}/mpi/tensor_parallel_mpi_test.cc)
  target_link_libraries(engine_mpi_tensor_parallel PRIVATE GTest::gtest tessera_engine)
  target_include_directories(engine_mpi_tensor_parallel PRIVATE ${CMAKE_SOURCE_DIR}
                             ${CMAKE_CURRENT_LIST_DIR})
  add_test(NAME engine_mpi_tensor_parallel_np4
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/../parallel/mpi/run_mpi.sh 4
                   $<TARGET_FILE:engine_mpi_tensor_parallel>)
  set_tests_properties(engine_mpi_tensor_parallel_np4 PROPERTIES LABELS "mpi;multirank"
                       TIMEOUT 300)
endif()
