// Writes valid binary seeds for the checkpoint and teacher-cache fuzz targets (formats change with the
// code, so they are made by the code under test rather than kept as stale blobs):
//   fuzz_seeds CHECKPOINT_DIR CACHE_DIR
#include <filesystem>
#include <iostream>

#include <torch/torch.h>

#include "kd/kd.h"

namespace {

struct Tiny : torch::nn::Module {
  Tiny() { fc = register_module("fc", torch::nn::Linear(3, 2)); }
  torch::nn::Linear fc{nullptr};
};

struct TinyTeacher : kd::Model {
  TinyTeacher() { fc = register_module("fc", torch::nn::Linear(3, 4)); }
  kd::ModelOutput forward(const torch::Tensor& x) override {
    kd::ModelOutput out;
    out.hidden_states.push_back(torch::tanh(x));
    out.logits = fc->forward(out.hidden_states.back());
    out.attentions.push_back(torch::softmax(out.logits.view({-1, 1, 2, 2}), -1));
    return out;
  }
  torch::nn::Linear fc{nullptr};
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: fuzz_seeds CHECKPOINT_DIR CACHE_DIR\n";
    return 2;
  }
  namespace fs = std::filesystem;
  fs::create_directories(argv[1]);
  fs::create_directories(argv[2]);
  torch::manual_seed(0);
  Tiny model;
  torch::optim::AdamW opt(model.parameters());
  kd::CheckpointManager manager(kd::CheckpointOptions(argv[1]).keep_last(10));
  kd::TrainingState state;
  state.global_step = 1;
  manager.save(state, {&model, nullptr, nullptr, nullptr});
  state.global_step = 2;
  manager.save(state, {&model, nullptr, &opt, nullptr});

  kd::Teacher teacher(std::make_shared<TinyTeacher>());
  kd::data::TensorDataset data{torch::randn({5, 3}), torch::zeros({5}, torch::kLong)};
  const std::string dir = argv[2];
  kd::data::TeacherCache::build(dir + "/full.cache", teacher, data);
  kd::data::TeacherCache::build(dir + "/topk.cache", teacher, data,
                                kd::data::TeacherCacheOptions().top_k(2).hidden_states({0}).attentions({-1}).dtype(torch::kFloat16));
  std::cout << "seeds written to " << argv[1] << " and " << argv[2] << "\n";
  return 0;
}
