#include "kd/data/fashion_mnist.h"

#include <filesystem>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/core/error.h"
#include "kd/core/model_output.h"
#include "kd/data/idx.h"

namespace kd::data {
namespace fs = std::filesystem;

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

TensorDataset load_fashion_mnist(Split split, const FashionMnistOptions& options) {
  const std::string prefix = split == Split::kTest ? "t10k" : "train";
  const fs::path images_path = fs::path(options.root()) / (prefix + "-images-idx3-ubyte.gz");
  const fs::path labels_path = fs::path(options.root()) / (prefix + "-labels-idx1-ubyte.gz");
  for (const auto& p : {images_path, labels_path}) {
    if (!fs::exists(p)) {
      throw Error(ErrorCategory::kFile,
                  fmt::format("Fashion-MNIST file '{}' is missing; install the data with "
                              "`apt-get install dataset-fashion-mnist` (or point the root option at a "
                              "folder holding the four IDX .gz files)",
                              p.string()));
    }
  }
  auto images = read_idx(images_path.string());
  auto labels = read_idx(labels_path.string());
  if (images.dim() != 3 || images.size(1) != 28 || images.size(2) != 28 || labels.dim() != 1 ||
      images.size(0) != labels.size(0)) {
    throw Error(ErrorCategory::kFormat,
                fmt::format("Fashion-MNIST images {} and labels {} do not form a dataset of 28x28 images",
                            shape_string(images), shape_string(labels)));
  }
  const auto classes = static_cast<int64_t>(fashion_mnist_classes().size());
  const auto bad = (labels.to(torch::kInt64) < 0) | (labels.to(torch::kInt64) >= classes);
  if (bad.any().item<bool>()) {
    const auto first = bad.nonzero()[0][0].item<int64_t>();
    throw Error(ErrorCategory::kFormat,
                fmt::format("Fashion-MNIST labels '{}': label {} of example {} is not a class in [0, {}) ({} such "
                            "labels); the file is damaged, restore it (apt-get install --reinstall "
                            "dataset-fashion-mnist)",
                            labels_path.string(), labels[first].item<int64_t>(), first, classes,
                            bad.sum().item<int64_t>()));
  }
  TensorDataset all{((images.to(torch::kFloat32) / 255.0 - kFashionMnistMean) / kFashionMnistStd).unsqueeze(1),
                    labels.to(torch::kInt64), torch::Tensor()};  // images: no padding mask

  TensorDataset out = all;
  if (split != Split::kTest) {
    const int64_t n = all.size();
    const int64_t n_val = options.validation_size();
    if (n_val < 0 || n_val >= n) {
      throw Error(ErrorCategory::kValue,
                  fmt::format("validation_size must be in [0, {}), got {}", n, n_val));
    }
    const auto order = permutation(n, options.split_seed());
    const auto idx = torch::tensor(order, torch::kInt64);
    out = all.select(split == Split::kValidation ? idx.slice(0, 0, n_val) : idx.slice(0, n_val));
  }
  if (options.limit() > 0 && options.limit() < out.size()) {
    out = {out.inputs.slice(0, 0, options.limit()).clone(), out.targets.slice(0, 0, options.limit()).clone(),
           torch::Tensor()};
  }
  return out;
}

}  // namespace kd::data
