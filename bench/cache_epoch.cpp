// Cost of an epoch whose teacher outputs come from the teacher-output cache,
// against student-only training (no teacher at all) and online distillation,
// in one process on the same data (Fashion-MNIST, W1 teacher/student pair).
//
//   build/bench/bench_cache_epoch [n_train=10000] [rounds=3]
//
// Prints one JSON line per mode with the median epoch time over `rounds`, and
// the ratio cached / student-only.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "kd/kd.h"
#include "kd/data/fashion_mnist.h"
#include "kd/data/teacher_cache.h"
#include "kd/models/cnn.h"
#include "kd/train/staged_trainer.h"

namespace {

double epoch_seconds(std::optional<kd::Teacher> teacher, std::shared_ptr<kd::data::TeacherCache> cache,
                     torch::nn::AnyModule loss, const kd::data::TensorDataset& train) {
  torch::manual_seed(0);
  // The KL loss reads logits only: no spatial attention maps.
  kd::models::DepthwiseCnnStudent student(kd::models::DepthwiseCnnStudentOptions().attention_maps(false));
  kd::StagedTrainer trainer(kd::Student(student.ptr()), std::move(teacher), {kd::Stage("bench", loss).epochs(1)},
                            kd::StagedTrainerOptions().batch_size(128).teacher_cache(cache));
  const auto start = std::chrono::steady_clock::now();
  trainer.fit(train);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 10000;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 3;
  torch::set_num_threads(std::max(1u, std::thread::hardware_concurrency()));
  spdlog::set_level(spdlog::level::warn);  // stdout carries only the JSON result
  auto train = kd::data::load_fashion_mnist(kd::data::Split::kTrain, kd::data::FashionMnistOptions().limit(n));

  torch::manual_seed(1);
  // Untrained weights cost the same to run as trained ones; KL needs no attention maps.
  kd::models::CnnTeacher teacher_net(kd::models::CnnTeacherOptions().attention_maps(false));
  kd::Teacher teacher(teacher_net.ptr());
  const auto path = (std::filesystem::temp_directory_path() / "kd_bench_cache_epoch.cache").string();
  const auto build_start = std::chrono::steady_clock::now();
  kd::data::TeacherCache::build(path, teacher, train);
  auto cache = std::shared_ptr<kd::data::TeacherCache>(kd::data::TeacherCache::open(
      path, kd::data::module_fingerprint(*teacher_net), kd::data::dataset_fingerprint(train)));
  const double build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - build_start).count();

  std::vector<double> alone, cached, online;
  for (int r = 0; r < rounds; ++r) {  // rotate the order so warm-up and machine noise hit every mode
    for (int k = 0; k < 3; ++k) {
      switch ((r + k) % 3) {
        case 0: alone.push_back(epoch_seconds(std::nullopt, nullptr, torch::nn::AnyModule(kd::HardLabelCE()), train)); break;
        case 1: cached.push_back(epoch_seconds(std::nullopt, cache, torch::nn::AnyModule(kd::TemperatureKL()), train)); break;
        default: online.push_back(epoch_seconds(teacher, nullptr, torch::nn::AnyModule(kd::TemperatureKL()), train));
      }
    }
  }
  std::printf("{\"bench\":\"cache_epoch\",\"examples\":%lld,\"threads\":%d,\"rounds\":%d,\"cache_build_s\":%.3f,"
              "\"student_only_s\":%.3f,\"cached_s\":%.3f,\"online_s\":%.3f,\"cached_over_student_only\":%.3f,"
              "\"online_over_cached\":%.3f}\n",
              static_cast<long long>(n), torch::get_num_threads(), rounds, build_s, median(alone), median(cached),
              median(online), median(cached) / median(alone), median(online) / median(cached));
  std::filesystem::remove(path);
  return 0;
}
