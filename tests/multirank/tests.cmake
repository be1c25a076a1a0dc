# Multi-rank runs of the real `tessera` command under mpirun (label mpi).
if(TARGET tessera AND TESSERA_WITH_MPI)
  add_test(NAME mpi_data_parallel
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/mpi_data_parallel.sh $<TARGET_FILE:tessera>)
  set_tests_properties(mpi_data_parallel PROPERTIES LABELS "mpi;multirank" TIMEOUT 300
                       ENVIRONMENT "TESSERA_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()
if(TARGET tessera AND TESSERA_WITH_MPI)
  add_test(NAME mpi_zero COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/mpi_zero.sh $<TARGET_FILE:tessera>)
  set_tests_properties(mpi_zero PROPERTIES LABELS "mpi;multirank" TIMEOUT 300
                       ENVIRONMENT "TESSERA_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()
