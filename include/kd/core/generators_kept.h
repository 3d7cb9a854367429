#pragma once
/// \file
/// The default random generators' states, kept and put back.

#include <vector>

#include <ATen/core/Generator.h>
#include <torch/torch.h>

namespace kd {

/// Keeps the states of the default random generators (the CPU one and every CUDA device's) and puts them
/// back when it goes out of scope, also when an exception leaves it: what runs inside (a check of the
/// stages, a dry run, models built only to be measured) draws no number a later step would have drawn.
///
/// Example:
/// ```
/// { kd::GeneratorsKept kept; auto probe = make_model(); }  // its initial weights drew; the stream did not move
/// ```
class GeneratorsKept {
 public:
  GeneratorsKept();
  ~GeneratorsKept();
  GeneratorsKept(const GeneratorsKept&) = delete;
  GeneratorsKept& operator=(const GeneratorsKept&) = delete;

 private:
  std::vector<at::Generator> generators_;
  std::vector<torch::Tensor> states_;
};

}  // namespace kd
