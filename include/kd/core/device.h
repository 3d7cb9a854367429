#pragma once
/// \file
/// Device and dtype selection, in one place.

#include <string>

#include <torch/types.h>

namespace kd {

/// Parses "cpu", "cuda", "cuda:N" or "auto" (CUDA when available, else CPU).
/// Throws kd::Error (kDevice) when CUDA is asked for but absent, and
/// (kValue) for anything else.
///
/// Example: `torch::Device d = kd::resolve_device("auto");`
torch::Device resolve_device(const std::string& spec);

/// Parses "float32"/"fp32", "float64"/"fp64", "bfloat16"/"bf16", "float16"/"fp16".
torch::Dtype parse_dtype(const std::string& name);

/// Short name of a dtype, the inverse of parse_dtype ("float32", ...).
std::string dtype_name(torch::Dtype dtype);

}  // namespace kd
