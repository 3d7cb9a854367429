# ctest driver: install the build tree to a prefix, then configure, build and
# run tests/consumer against it with find_package(kdistill).
file(REMOVE_RECURSE ${KD_WORK_DIR})
set(prefix ${KD_WORK_DIR}/prefix)

function(step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer step failed (${rc}): ${ARGN}")
  endif()
endfunction()

step(${CMAKE_COMMAND} --install ${KD_BINARY_DIR} --prefix ${prefix})
step(${CMAKE_COMMAND} -S ${KD_CONSUMER_SOURCE} -B ${KD_WORK_DIR}/build -G ${KD_GENERATOR}
     -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${prefix})
step(${CMAKE_COMMAND} --build ${KD_WORK_DIR}/build)
step(${KD_WORK_DIR}/build/consumer)
