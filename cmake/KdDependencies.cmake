# Finds every dependency once, so targets below only name them.
# LibTorch: Debian's libtorch-dev (1.13, CPU) or any LibTorch 2.x found through
# CMAKE_PREFIX_PATH, e.g. `python3 -c 'import torch;print(torch.utils.cmake_prefix_path)'`.
find_package(Torch REQUIRED)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(ZLIB REQUIRED)
find_package(Eigen3 REQUIRED NO_MODULE)
find_package(nlohmann_json REQUIRED)
find_package(CLI11 REQUIRED CONFIG)
# TensorBoard event files (kd::TensorBoardWriter): protoc compiles their messages (Debian: protobuf-compiler,
# libprotobuf-dev).
find_package(Protobuf REQUIRED)

# One precompiled <torch/torch.h> per target: each translation unit that parses
# it from scratch costs ~20 s on two cores.
function(kd_use_torch_pch target)
  if(KD_USE_PCH)
    target_precompile_headers(${target} PRIVATE <torch/torch.h> <vector> <string> <map>)
  endif()
endfunction()
