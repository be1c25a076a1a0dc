# tests/fuzz: libFuzzer harnesses for every parser of outside input. Included by
# tests/CMakeLists.txt.
#
# Default build (gcc, CI): each harness links replay_main.cc, and ctest fuzz_regression_<name>
# (label unit) replays seeds/<name> and regressions/<name>, so fixed findings stay fixed.
# TESSERA_FUZZ=ON (clang, see scripts/fuzz.sh): the harnesses link libFuzzer; fuzz_<name>
# (label fuzz) fuzzes for TESSERA_FUZZ_SECONDS into a corpus under the build tree, and
# fuzz_regression_<name> replays the same inputs through libFuzzer's main (-runs=0).

set(TESSERA_FUZZ_SECONDS 10 CACHE STRING "Seconds each fuzz_<name> ctest entry fuzzes for")
if(TESSERA_FUZZ)
  # The fuzz build compiles the parsers' own sources (over tessera_core) instead of linking
  # tessera_models / tessera_engine / tessera_launch: those pull in runtime/kernels, which
  # clang 14 does not compile (convert.cc's __builtin_cpu_supports("f16c")), and none of the
  # kernels is reachable from a parser. Keep this list to what the harnesses call.
  add_library(tessera_fuzz_parsers STATIC
    ${CMAKE_SOURCE_DIR}/launch/launch.cc
    ${CMAKE_SOURCE_DIR}/models/gpt_config.cc
    ${CMAKE_SOURCE_DIR}/models/safetensors.cc
    ${CMAKE_SOURCE_DIR}/runtime/engine/checkpoint_format.cc
    ${CMAKE_SOURCE_DIR}/runtime/engine/config.cc
    ${CMAKE_SOURCE_DIR}/runtime/engine/loss_scaler.cc
    ${CMAKE_SOURCE_DIR}/runtime/engine/token_data.cc)
  target_link_libraries(tessera_fuzz_parsers PUBLIC tessera_core nlohmann_json::nlohmann_json)
endif()
add_custom_target(tessera_fuzz_harnesses)
set(_fuzz_env "UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1")

# tessera_fuzz_harness(name libraries...): fuzz_<name>.cc, linked with just those libraries
# (with tessera_fuzz_parsers in the fuzz build).
function(tessera_fuzz_harness name)
  set(dir ${CMAKE_CURRENT_FUNCTION_LIST_DIR})
  set(target fuzz_${name})
  add_executable(${target} ${dir}/fuzz_${name}.cc)
  if(TESSERA_FUZZ)
    target_link_libraries(${target} PRIVATE tessera_fuzz_parsers)
  else()
    target_link_libraries(${target} PRIVATE ${ARGN})
  endif()
  add_dependencies(tessera_fuzz_harnesses ${target})
  set(inputs ${dir}/seeds/${name})
  if(EXISTS ${dir}/regressions/${name})
    list(APPEND inputs ${dir}/regressions/${name})
  endif()
  if(TESSERA_FUZZ)
    target_link_options(${target} PRIVATE -fsanitize=fuzzer)
    file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz/artifacts)
    add_test(NAME fuzz_regression_${name} COMMAND ${target} -runs=0
             -artifact_prefix=${CMAKE_BINARY_DIR}/fuzz/artifacts/replay_${name}- ${inputs})
    add_test(NAME fuzz_${name}
             COMMAND bash ${dir}/run_fuzzer.sh $<TARGET_FILE:${target}> ${name}
                     ${TESSERA_FUZZ_SECONDS} ${CMAKE_BINARY_DIR}/fuzz ${dir})
    # The timeout leaves room for loading a grown corpus and the final report.
    math(EXPR timeout "${TESSERA_FUZZ_SECONDS} + 300")
    set_tests_properties(fuzz_${name} PROPERTIES LABELS fuzz TIMEOUT ${timeout}
                         ENVIRONMENT "${_fuzz_env}")
  else()
    target_sources(${target} PRIVATE ${dir}/replay_main.cc)
    add_test(NAME fuzz_regression_${name} COMMAND ${target} ${inputs})
  endif()
  set_tests_properties(fuzz_regression_${name} PROPERTIES LABELS unit TIMEOUT 120
                       ENVIRONMENT "${_fuzz_env}")
endfunction()

tessera_fuzz_harness(config tessera_engine)
tessera_fuzz_harness(safetensors tessera_models)
tessera_fuzz_harness(token_file tessera_engine)
tessera_fuzz_harness(hostfile tessera_launch)
tessera_fuzz_harness(checkpoint_manifest tessera_engine)
