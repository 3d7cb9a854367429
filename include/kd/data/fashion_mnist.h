#pragma once
/// \file
/// Fashion-MNIST from the Debian package `dataset-fashion-mnist`.

#include <string>

#include <torch/arg.h>

#include "kd/data/split.h"
#include "kd/data/tensor_dataset.h"

namespace kd::data {

/// Options for load_fashion_mnist.
struct FashionMnistOptions {
  /// Folder holding {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz.
  TORCH_ARG(std::string, root) = "/usr/share/datasets/fashion-mnist";
  /// Examples of the 60 000 training images held out for validation.
  TORCH_ARG(int64_t, validation_size) = 5000;
  /// Seed of the train/validation split (the same seed always gives the same split).
  TORCH_ARG(uint64_t, split_seed) = 0;
  /// Keep only the first `limit` examples of the split (0 = all), for quick runs.
  TORCH_ARG(int64_t, limit) = 0;
};

/// The normalisation load_fashion_mnist applies to a pixel p ∈ [0, 1]: x = (p − mean) / std, with
/// the training set's mean and standard deviation.
inline constexpr double kFashionMnistMean = 0.2860;
inline constexpr double kFashionMnistStd = 0.3530;
/// A blank (black, p = 0) pixel after that normalisation, −mean / std ≈ −0.810: the background of
/// every image, so what an augmentation that uncovers pixels must fill them with
/// (kd::data::RandomShiftFlipOptions::fill). Filling with 0 would draw grey bars (p ≈ 0.29).
inline constexpr double kFashionMnistBlank = -kFashionMnistMean / kFashionMnistStd;

/// The ten class names, index = label.
const std::vector<std::string>& fashion_mnist_classes();

/// Loads one split: inputs float32 [N, 1, 28, 28] normalised with the
/// training set's mean 0.2860 and std 0.3530 (kFashionMnistMean, kFashionMnistStd), targets int64 [N].
/// Train and validation come from the 60 000 training images, split by a
/// seeded permutation; test is the 10 000 t10k images.
///
/// Throws kd::Error (kFile) when the files are missing, with the install command.
///
/// Example: `auto test = kd::data::load_fashion_mnist(kd::data::Split::kTest);`
TensorDataset load_fashion_mnist(Split split, const FashionMnistOptions& options = {});

}  // namespace kd::data
