# ctest driver: install the build tree to a prefix, then
#  1. run the INSTALLED kd-train (no LD_LIBRARY_PATH: it must find libkdistill through its relative RPATH) and
#     check the shipped configs are installed,
#  2. configure, build and run tests/consumer against the prefix with find_package(kdistill): its own program,
#     and the README's C++ program (the first ```cpp block holding `int main`), compiled as a user copies it,
#  3. build examples/my_kd_train (a kd-train with an extra loss) against kdistill::app and list its loss.
# Inputs: KD_BINARY_DIR, KD_CONSUMER_SOURCE, KD_WORK_DIR, KD_GENERATOR; optional KD_README (README.md),
# KD_WITH_APPS (kd-train was built), KD_INSTALL_BINDIR / KD_INSTALL_DATADIR (GNUInstallDirs of the build),
# KD_DATA_ROOT (Fashion-MNIST, for a short run of the README program).
file(REMOVE_RECURSE ${KD_WORK_DIR})
set(prefix ${KD_WORK_DIR}/prefix)
if(NOT DEFINED KD_INSTALL_BINDIR)
  set(KD_INSTALL_BINDIR bin)
endif()
if(NOT DEFINED KD_INSTALL_DATADIR)
  set(KD_INSTALL_DATADIR share)
endif()
if(NOT DEFINED KD_DATA_ROOT)
  set(KD_DATA_ROOT /usr/share/datasets/fashion-mnist)
endif()

function(step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer step failed (${rc}): ${ARGN}")
  endif()
endfunction()

step(${CMAKE_COMMAND} --install ${KD_BINARY_DIR} --prefix ${prefix})

# ---- 1. the installed kd-train and configs
set(config ${prefix}/${KD_INSTALL_DATADIR}/kdistill/configs/fashion_mnist.json)
if(NOT EXISTS ${config})
  message(FATAL_ERROR "the shipped configs are not installed: ${config} is missing")
endif()
if(KD_WITH_APPS)
  set(kd_train ${prefix}/${KD_INSTALL_BINDIR}/kd-train)
  if(NOT EXISTS ${kd_train})
    message(FATAL_ERROR "kd-train is not installed: ${kd_train} is missing")
  endif()
  # The build tree's RUNPATH would find libkdistill in the build folder and hide a missing install RPATH.
  file(READ_ELF ${kd_train} RUNPATH runpath RPATH rpath CAPTURE_ERROR elf_error)
  if(elf_error)
    message(FATAL_ERROR "cannot read ${kd_train}'s dynamic section: ${elf_error}")
  endif()
  if(NOT "${runpath}${rpath}" MATCHES "\\$ORIGIN/")
    message(FATAL_ERROR "installed kd-train has no relative RPATH to its libraries (RUNPATH '${runpath}', RPATH '${rpath}')")
  endif()
  string(FIND "${runpath}${rpath}" "${KD_BINARY_DIR}" in_build_tree)
  if(NOT in_build_tree EQUAL -1)
    message(FATAL_ERROR "installed kd-train still points into the build tree (RUNPATH '${runpath}', RPATH '${rpath}')")
  endif()
  execute_process(COMMAND ${CMAKE_COMMAND} -E env --unset=LD_LIBRARY_PATH ${kd_train} list
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "installed '${kd_train} list' (LD_LIBRARY_PATH unset) failed (${rc}):\n${out}${err}")
  endif()
  foreach(loss attention_mse feature_l2 gradient_matching hard_label_ce teacher_mixture_kl temperature_kl)
    if(NOT out MATCHES "\n  ${loss} ")
      message(FATAL_ERROR "installed 'kd-train list' does not list the loss '${loss}':\n${out}")
    endif()
  endforeach()
  message(STATUS "installed kd-train runs without LD_LIBRARY_PATH (RUNPATH '${runpath}${rpath}') and lists the losses")
endif()

# ---- 2. an outside project: tests/consumer/main.cpp and the README's program
set(readme_args "")
if(KD_README)
  file(READ ${KD_README} readme)
  set(program "")
  set(rest "${readme}")
  while(program STREQUAL "")
    string(FIND "${rest}" "```cpp\n" open)
    if(open EQUAL -1)
      break()
    endif()
    math(EXPR start "${open} + 7")
    string(SUBSTRING "${rest}" ${start} -1 rest)
    string(FIND "${rest}" "\n```" close)
    if(close EQUAL -1)
      message(FATAL_ERROR "${KD_README}: a ```cpp block is not closed")
    endif()
    math(EXPR close "${close} + 1")
    string(SUBSTRING "${rest}" 0 ${close} block)
    string(SUBSTRING "${rest}" ${close} -1 rest)
    string(FIND "${block}" "int main" has_main)
    if(NOT has_main EQUAL -1)
      set(program "${block}")
    endif()
  endwhile()
  if(program STREQUAL "")
    message(FATAL_ERROR "${KD_README} has no ```cpp block with `int main`: the README's C++ program is missing")
  endif()
  file(WRITE ${KD_WORK_DIR}/readme/readme_program.cpp "${program}")
  set(readme_args -DKD_README_PROGRAM=${KD_WORK_DIR}/readme/readme_program.cpp)
endif()

step(${CMAKE_COMMAND} -S ${KD_CONSUMER_SOURCE} -B ${KD_WORK_DIR}/build -G ${KD_GENERATOR}
     -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${prefix} ${readme_args})
step(${CMAKE_COMMAND} --build ${KD_WORK_DIR}/build)
step(${KD_WORK_DIR}/build/consumer)

# The README program on 256 images per split (a few seconds), when the data set is here.
if(KD_README)
  if(EXISTS ${KD_DATA_ROOT}/train-images-idx3-ubyte.gz)
    execute_process(COMMAND ${KD_WORK_DIR}/build/readme_program 256
      WORKING_DIRECTORY ${KD_WORK_DIR}/build RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(NOT rc EQUAL 0 OR NOT out MATCHES "student +16650 parameters, test accuracy")
      message(FATAL_ERROR "the README's program failed (${rc}):\n${out}${err}")
    endif()
    message(STATUS "the README's program ran:\n${out}")
  else()
    message(STATUS "the README's program compiled and linked; not run (no Fashion-MNIST in ${KD_DATA_ROOT})")
  endif()
endif()

# ---- 3. a kd-train of one's own (examples/my_kd_train) against kdistill::app: its extra loss is listed
if(KD_WITH_APPS AND DEFINED KD_MY_KD_TRAIN_SOURCE)
  step(${CMAKE_COMMAND} -S ${KD_MY_KD_TRAIN_SOURCE} -B ${KD_WORK_DIR}/my_kd_train -G ${KD_GENERATOR}
       -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${prefix})
  step(${CMAKE_COMMAND} --build ${KD_WORK_DIR}/my_kd_train)
  execute_process(COMMAND ${CMAKE_COMMAND} -E env --unset=LD_LIBRARY_PATH ${KD_WORK_DIR}/my_kd_train/my_kd_train list
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0 OR NOT out MATCHES "\n  margin_kl +T" OR NOT out MATCHES "\n  temperature_kl ")
    message(FATAL_ERROR "examples/my_kd_train built against the installed kdistill::app does not list its loss (${rc}):\n${out}${err}")
  endif()
  message(STATUS "examples/my_kd_train built against the installed package and lists margin_kl")
endif()
