#pragma once
/// \file
/// Which part of a data set: train, validation or test.

namespace kd::data {

/// A data set's partition. Every loader documents how it assigns examples to each.
enum class Split { kTrain, kValidation, kTest };

}  // namespace kd::data
