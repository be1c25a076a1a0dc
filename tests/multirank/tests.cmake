# Multi-rank runs of the real `tessera` command under mpirun (label mpi).
math(EXPR multirank_timeout "300 * ${TESSERA_TEST_TIMEOUT_SCALE}")
if(TARGET tessera AND TESSERA_WITH_MPI)
  add_test(NAME mpi_data_parallel
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/mpi_data_parallel.sh $<TARGET_FILE:tessera>)
  set_tests_properties(mpi_data_parallel PROPERTIES LABELS "mpi;multirank" TIMEOUT ${multirank_timeout}
                       ENVIRONMENT "TESSERA_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()
if(TARGET tessera AND TESSERA_WITH_MPI)
  add_test(NAME mpi_zero COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/mpi_zero.sh $<TARGET_FILE:tessera>)
  set_tests_properties(mpi_zero PROPERTIES LABELS "mpi;multirank" TIMEOUT ${multirank_timeout}
                       ENVIRONMENT "TESSERA_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()

# Thread ranks through the real command (no MPI needed).
if(TARGET tessera)
  add_test(NAME thread_ranks_cli
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/thread_ranks_cli.sh $<TARGET_FILE:tessera>)
  set_tests_properties(thread_ranks_cli PROPERTIES LABELS multirank TIMEOUT 600
                       ENVIRONMENT "TESSERA_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()
if(TARGET tessera AND TESSERA_WITH_MPI)
  add_test(NAME mpi_activation_checkpointing
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/mpi_activation_checkpointing.sh $<TARGET_FILE:tessera>)
  set_tests_properties(mpi_activation_checkpointing PROPERTIES LABELS "mpi;multirank"
                       TIMEOUT ${multirank_timeout} ENVIRONMENT "TESSERA_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()

# Tensor parallelism through the real command, on thread ranks and under mpirun.
if(TARGET tessera)
  add_test(NAME thread_ranks_tensor_parallel
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/tensor_parallel_cli.sh $<TARGET_FILE:tessera> threads)
  set_tests_properties(thread_ranks_tensor_parallel PROPERTIES LABELS multirank TIMEOUT 600
                       ENVIRONMENT "TESSERA_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()
if(TARGET tessera AND TESSERA_WITH_MPI)
  add_test(NAME mpi_tensor_parallel
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/tensor_parallel_cli.sh $<TARGET_FILE:tessera> mpi)
  set_tests_properties(mpi_tensor_parallel PROPERTIES LABELS "mpi;multirank"
                       TIMEOUT ${multirank_timeout} ENVIRONMENT "TESSERA_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()

# Pipeline parallelism through the real command, on thread ranks and under mpirun.
if(TARGET tessera)
  add_test(NAME thread_ranks_pipeline_parallel
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/pipeline_parallel_cli.sh $<TARGET_FILE:tessera> threads)
  set_tests_properties(thread_ranks_pipeline_parallel PROPERTIES LABELS multirank TIMEOUT 600
                       ENVIRONMENT "TESSERA_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()
if(TARGET tessera AND TESSERA_WITH_MPI)
  add_test(NAME mpi_pipeline_parallel
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/pipeline_parallel_cli.sh $<TARGET_FILE:tessera> mpi)
  set_tests_properties(mpi_pipeline_parallel PROPERTIES LABELS "mpi;multirank"
                       TIMEOUT ${multirank_timeout} ENVIRONMENT "TESSERA_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()

# Training checkpoints through the real command (save, resume bit for bit, inspect / verify /
# export, corruption, kill -9 and SIGTERM mid-save, a full disk), on thread ranks and under
# mpirun.
if(TARGET tessera)
  add_test(NAME thread_ranks_checkpoint_cli
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/checkpoint_cli.sh $<TARGET_FILE:tessera> threads)
  set_tests_properties(thread_ranks_checkpoint_cli PROPERTIES LABELS multirank TIMEOUT 600
                       ENVIRONMENT "TESSERA_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()
if(TARGET tessera AND TESSERA_WITH_MPI)
  add_test(NAME mpi_checkpoint_cli
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/checkpoint_cli.sh $<TARGET_FILE:tessera> mpi)
  set_tests_properties(mpi_checkpoint_cli PROPERTIES LABELS "mpi;multirank"
                       TIMEOUT ${multirank_timeout} ENVIRONMENT "TESSERA_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()

# Optimizer offload through the real command (bit for bit against the states in memory, bad
# and full nvme_path, an injected I/O error), on thread ranks and under mpirun.
if(TARGET tessera)
  add_test(NAME thread_ranks_offload_cli
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/offload_cli.sh $<TARGET_FILE:tessera> threads)
  set_tests_properties(thread_ranks_offload_cli PROPERTIES LABELS multirank TIMEOUT 300
                       ENVIRONMENT "TESSERA_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()
if(TARGET tessera AND TESSERA_WITH_MPI)
  add_test(NAME mpi_offload_cli
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/offload_cli.sh $<TARGET_FILE:tessera> mpi)
  set_tests_properties(mpi_offload_cli PROPERTIES LABELS "mpi;multirank" TIMEOUT 300
                       ENVIRONMENT "TESSERA_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()
