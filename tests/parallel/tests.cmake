# MPI test jobs for parallel/comm, as mpirun ctest entries (label mpi). Included by
# tests/CMakeLists.txt; paths are relative to this file so any including project works.

if(TESSERA_WITH_MPI)
  set(_mpi_dir ${CMAKE_CURRENT_LIST_DIR}/mpi)
  set(_run_mpi ${_mpi_dir}/run_mpi.sh)

  add_executable(parallel_mpi_tests ${_mpi_dir}/mpi_main.cc ${_mpi_dir}/mpi_collectives_test.cc
                                    ${_mpi_dir}/mpi_conjugate_test.cc ${_mpi_dir}/mpi_p2p_test.cc)
  target_link_libraries(parallel_mpi_tests PRIVATE GTest::gtest tessera_parallel)
  add_executable(parallel_mpi_failure ${_mpi_dir}/mpi_failure_main.cc)
  target_link_libraries(parallel_mpi_failure PRIVATE tessera_parallel)

  foreach(np 2 4)
    add_test(NAME parallel_mpi_np${np} COMMAND ${_run_mpi} ${np} $<TARGET_FILE:parallel_mpi_tests>)
    set_tests_properties(parallel_mpi_np${np} PROPERTIES LABELS "mpi;multirank" TIMEOUT 300)
  endforeach()

  # One rank throws, is SIGKILLed, or never arrives: the job must exit non-zero in bounded
  # time. `absent` relies on the collective timeout, shortened here; `p2p_absent` on the
  # point-to-point one (a batch_send_recv waiting on a rank that never sends).
  foreach(mode throw kill absent absent_inline p2p_absent)
    add_test(NAME parallel_mpi_failure_${mode}
             COMMAND ${_run_mpi} 3 --expect-failure 60 $<TARGET_FILE:parallel_mpi_failure> ${mode})
    set_tests_properties(parallel_mpi_failure_${mode} PROPERTIES LABELS "mpi;multirank" TIMEOUT 120
                         ENVIRONMENT "TESSERA_COMM_TIMEOUT_S=3")
  endforeach()
endif()
