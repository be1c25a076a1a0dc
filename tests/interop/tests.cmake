# Interop with Hugging Face transformers (issue 3, weights): a GPT-2 saved by tessera must
# load in GPT2LMHeadModel and give the same logits. Included by tests/CMakeLists.txt.
#
# The script needs torch, transformers, safetensors and numpy in the Python ctest runs; it
# exits 77 (reported as skipped) without them, so CI need not install torch. Point
# TESSERA_PYTHON at a virtual environment's python to run it for real.

add_executable(interop_dump_logits ${CMAKE_CURRENT_LIST_DIR}/dump_logits.cc)
target_link_libraries(interop_dump_logits PRIVATE tessera_models)

find_program(TESSERA_PYTHON NAMES python3 python
             DOC "Python for tests/interop (with torch and transformers; skipped without them)")
if(TESSERA_PYTHON)
  add_test(NAME interop_hf_gpt2_logits
           COMMAND ${TESSERA_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/hf_gpt2_logits.py
                   $<TARGET_FILE:interop_dump_logits> ${CMAKE_CURRENT_BINARY_DIR}/interop_hf_gpt2)
  set_tests_properties(interop_hf_gpt2_logits PROPERTIES
                       SKIP_RETURN_CODE 77 LABELS "interop;slow" TIMEOUT 600)
endif()

if(TESSERA_PYTHON AND TARGET tessera)
  add_test(NAME interop_hf_tensor_parallel
           COMMAND ${TESSERA_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/hf_tensor_parallel.py
                   $<TARGET_FILE:tessera> $<TARGET_FILE:interop_dump_logits>
                   ${CMAKE_CURRENT_BINARY_DIR}/interop_hf_tensor_parallel)
  set_tests_properties(interop_hf_tensor_parallel PROPERTIES
                       SKIP_RETURN_CODE 77 LABELS "interop;slow" TIMEOUT 600
                       ENVIRONMENT "TESSERA_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()

if(TESSERA_PYTHON AND TARGET tessera)
  add_test(NAME interop_hf_checkpoint_export
           COMMAND ${TESSERA_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/hf_checkpoint_export.py
                   $<TARGET_FILE:tessera> $<TARGET_FILE:interop_dump_logits>
                   ${CMAKE_CURRENT_BINARY_DIR}/interop_hf_checkpoint_export)
  set_tests_properties(interop_hf_checkpoint_export PROPERTIES
                       SKIP_RETURN_CODE 77 LABELS "interop;slow" TIMEOUT 600
                       ENVIRONMENT "TESSERA_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()

include(${CMAKE_CURRENT_LIST_DIR}/tensorboard.cmake)
