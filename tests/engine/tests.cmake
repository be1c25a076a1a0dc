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

# Pipeline parallelism under mpirun: the whole world one pipeline at -np 2 and 4 against one
# rank, and DP 2 x TP 2 x PP 2 at -np 8 (oversubscribed: one thread per rank) against the
# data-parallel run; each np runs the tests of its size and skips the others.
if(TESSERA_WITH_MPI)
  add_executable(engine_mpi_pipeline_parallel ${CMAKE_CURRENT_LIST_DIR}/../parallel/mpi/mpi_main.cc
    ${CMAKE_CURRENT_LIST_DIR}/mpi/pipeline_parallel_mpi_test.cc)
  target_link_libraries(engine_mpi_pipeline_parallel PRIVATE GTest::gtest tessera_engine)
  target_include_directories(engine_mpi_pipeline_parallel PRIVATE ${CMAKE_SOURCE_DIR}
                             ${CMAKE_CURRENT_LIST_DIR})
  foreach(np 2 4 8)
    add_test(NAME engine_mpi_pipeline_parallel_np${np}
             COMMAND ${CMAKE_CURRENT_LIST_DIR}/../parallel/mpi/run_mpi.sh ${np}
                     $<TARGET_FILE:engine_mpi_pipeline_parallel>)
    set_tests_properties(engine_mpi_pipeline_parallel_np${np} PROPERTIES LABELS "mpi;multirank"
                         TIMEOUT 300 ENVIRONMENT "OMP_NUM_THREADS=1")
  endforeach()

  # A pipeline stage failing mid-step (world rank 1, before its send of a gradient in step 2):
  # it throws, is SIGKILLed, or stalls without sending; the job must exit non-zero in bounded
  # time, at -np 2 (rank 1 the last stage) and 4 (a middle one). A stall is caught by stage
  # 0's receive timing out, shortened here; at -np 2 its message must name the transfer.
  add_executable(engine_mpi_pipeline_failure ${CMAKE_CURRENT_LIST_DIR}/mpi/pipeline_failure_main.cc)
  target_link_libraries(engine_mpi_pipeline_failure PRIVATE GTest::gtest tessera_engine)
  target_include_directories(engine_mpi_pipeline_failure PRIVATE ${CMAKE_SOURCE_DIR}
                             ${CMAKE_CURRENT_LIST_DIR})
  foreach(np 2 4)
    foreach(mode throw kill absent)
      set(_name engine_mpi_pipeline_failure_${mode}_np${np})
      add_test(NAME ${_name}
               COMMAND ${CMAKE_CURRENT_LIST_DIR}/../parallel/mpi/run_mpi.sh ${np} --expect-failure 60
                       $<TARGET_FILE:engine_mpi_pipeline_failure> ${mode})
      set_tests_properties(${_name} PROPERTIES LABELS "mpi;multirank" TIMEOUT 120
                           ENVIRONMENT "TESSERA_COMM_TIMEOUT_S=3;OMP_NUM_THREADS=1")
    endforeach()
  endforeach()
  # PASS_REGULAR_EXPRESSION replaces the exit-code check, so the pattern also requires
  # run_mpi.sh's verdict, which it prints last.
  set_tests_properties(engine_mpi_pipeline_failure_absent_np2 PROPERTIES PASS_REGULAR_EXPRESSION
    "recv of gradient of micro-batch 1 from virtual stage 1 to 0 \\(from rank 1\\)[^\n]*did not complete within 3.0 s.*run_mpi.sh: the job failed as expected")
  set_tests_properties(engine_mpi_pipeline_failure_throw_np2 engine_mpi_pipeline_failure_throw_np4
    PROPERTIES PASS_REGULAR_EXPRESSION
    "pipeline stage 1 failed on purpose before its send of gradient of micro-batch 1.*run_mpi.sh: the job failed as expected")
endif()

# Training checkpoints under mpirun: every process writes its shard into one shared folder;
# exact resume at the job's size, resharding to one rank and back, a corrupt shard.
if(TESSERA_WITH_MPI)
  add_executable(engine_mpi_checkpoint ${CMAKE_CURRENT_LIST_DIR}/../parallel/mpi/mpi_main.cc
    ${CMAKE_CURRENT_LIST_DIR}/mpi/checkpoint_mpi_test.cc)
  target_link_libraries(engine_mpi_checkpoint PRIVATE GTest::gtest tessera_engine)
  target_include_directories(engine_mpi_checkpoint PRIVATE ${CMAKE_SOURCE_DIR}
                             ${CMAKE_CURRENT_LIST_DIR})
  foreach(np 2 4 8)
    add_test(NAME engine_mpi_checkpoint_np${np}
             COMMAND ${CMAKE_CURRENT_LIST_DIR}/../parallel/mpi/run_mpi.sh ${np}
                     $<TARGET_FILE:engine_mpi_checkpoint>)
    set_tests_properties(engine_mpi_checkpoint_np${np} PROPERTIES LABELS "mpi;multirank"
                         TIMEOUT 300 ENVIRONMENT "OMP_NUM_THREADS=1")
  endforeach()

  # Optimizer offload to a swap file per process, against the states in memory (np 2 and 4).
  add_executable(engine_mpi_offload ${CMAKE_CURRENT_LIST_DIR}/../parallel/mpi/mpi_main.cc
    ${CMAKE_CURRENT_LIST_DIR}/mpi/offload_mpi_test.cc)
  target_link_libraries(engine_mpi_offload PRIVATE GTest::gtest tessera_engine)
  target_include_directories(engine_mpi_offload PRIVATE ${CMAKE_SOURCE_DIR}
                             ${CMAKE_CURRENT_LIST_DIR})
  foreach(np 2 4)
    add_test(NAME engine_mpi_offload_np${np}
             COMMAND ${CMAKE_CURRENT_LIST_DIR}/../parallel/mpi/run_mpi.sh ${np}
                     $<TARGET_FILE:engine_mpi_offload>)
    set_tests_properties(engine_mpi_offload_np${np} PROPERTIES LABELS "mpi;multirank"
                         TIMEOUT 300 ENVIRONMENT "OMP_NUM_THREADS=1")
  endforeach()
endif()
