// Cost of a GradientMatching (R1) step relative to a plain TemperatureKL step on small CNNs
// (the figures quoted in include/kd/losses/gradient_matching.h). A step = teacher and student
// forward, loss, backward; the fastest of `reps` steps after a warm-up; one intra-op thread.
//
//   build/bench/bench_r1_cost [reps=5]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include <torch/torch.h>

#include "kd/kd.h"

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 5;
  // One intra-op thread: on a shared machine thread contention otherwise swamps the ratio.
  torch::set_num_threads(1);
  torch::manual_seed(0);
  const auto x = torch::randn({32, 1, 28, 28});
  const auto y = torch::randint(0, 10, {32}, torch::kLong);
  kd::TemperatureKL kl(kd::TemperatureKLOptions().temperature(1.0));
  kd::GradientMatching r1;

  auto measure = [&](const char* label, kd::ModelPtr teacher_model) {
    auto student = std::make_shared<kd::models::DepthwiseCnnStudentImpl>(
        kd::models::DepthwiseCnnStudentOptions().attention_maps(false));
    kd::Teacher teacher(std::move(teacher_model));
    auto plain_step = [&] {
      kd::DistillBatch b;
      b.inputs = x;
      b.targets = y;
      b.teacher = teacher->forward(x);
      b.student = student->forward(x);
      kl->forward(b).total.backward();
    };
    auto r1_step = [&] {
      kd::DistillBatch b;
      b.inputs = x.clone().requires_grad_(true);
      b.teacher_inputs = x.clone().requires_grad_(true);
      b.targets = y;
      b.teacher = teacher->forward_with_input_grad(b.teacher_inputs);
      b.student = student->forward(b.inputs);
      r1->forward(b).total.backward();
    };
    auto time_it = [&](const std::function<void()>& step) {
      step();  // warm-up
      double best = 1e30;
      for (int i = 0; i < reps; ++i) {
        student->zero_grad();
        const auto t0 = std::chrono::steady_clock::now();
        step();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      return best;
    };
    const double plain = time_it(plain_step);
    const double matched = time_it(r1_step);
    std::printf("{\"teacher\": \"%s\", \"plain_kl_ms\": %.2f, \"gradient_matching_ms\": %.2f, \"ratio\": %.2f}\n",
                label, plain * 1e3, matched * 1e3, matched / plain);
  };
  measure("CnnTeacher 16/32/64", std::make_shared<kd::models::CnnTeacherImpl>(
                                     kd::models::CnnTeacherOptions().width1(16).width2(32).hidden(64).attention_maps(false)));
  measure("student-sized", std::make_shared<kd::models::DepthwiseCnnStudentImpl>(
                               kd::models::DepthwiseCnnStudentOptions().attention_maps(false)));
  return 0;
}
