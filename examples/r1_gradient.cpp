// R1 gradient matching against plain KL on the same teacher/student pair (Fashion-MNIST): two
// students start from the same weights; one learns from soft targets (0.8·KL at T = 3 + 0.2·CE), the
// other also matches the teacher's input gradients,
//   L_r1 = λ·MSE(∇ₓ CE_teacher, ∇ₓ CE_student) + (1 − λ)·KL(p_t ‖ p_s),  λ from 0.8 down to 0.3,
// in place of the KL term (0.8·L_r1 + 0.2·CE). Prints each one's test accuracy and its time per step:
// R1 needs double backward, so a step costs several plain ones. kd-train: configs/r1_gradient.json.
//
//   build/examples/r1_gradient [limit] [epochs]   (limit: images per split, default all; epochs: 2)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include <torch/torch.h>

#include "kd/kd.h"

int main(int argc, char** argv) try {
  torch::manual_seed(0);
  const int64_t limit = argc > 1 ? std::atoll(argv[1]) : 0;
  const int64_t epochs = argc > 2 ? std::atoll(argv[2]) : 2;
  auto data = kd::data::FashionMnistOptions().limit(limit);
  auto train = kd::data::load_fashion_mnist(kd::data::Split::kTrain, data);
  auto val = kd::data::load_fashion_mnist(kd::data::Split::kValidation, data);
  auto test = kd::data::load_fashion_mnist(kd::data::Split::kTest, data);

  kd::models::CnnTeacher teacher_net;
  kd::StagedTrainer(kd::Student(teacher_net.ptr()), std::nullopt,
                    {kd::Stage("teacher", torch::nn::AnyModule(kd::HardLabelCE())).epochs(2)})
      .fit(train);
  kd::Teacher teacher(teacher_net.ptr());

  const auto kl = kd::LossSpec("temperature_kl").name("kl").weight(0.8).set("temperature", 3.0);
  const auto r1 = kd::LossSpec("gradient_matching")
                      .name("r1")
                      .weight(0.8)
                      .set("lambda_start", 0.8)
                      .set("lambda_end", 0.3)
                      .set("temperature", 3.0);
  const auto ce = kd::LossSpec("hard_label_ce").name("ce").weight(0.2);

  struct Result {
    double accuracy, seconds_per_step;
  };
  auto run = [&](const char* name, const kd::LossSpec& soft) {
    torch::manual_seed(1);  // the same initial student for both
    kd::models::DepthwiseCnnStudent student;
    kd::StagedTrainer trainer(kd::Student(student.ptr()), teacher,
                              kd::build_stages({kd::StageSpec(name).epochs(epochs).losses({soft, ce})}),
                              kd::StagedTrainerOptions().num_classes(10));
    trainer.add_callback(std::make_shared<kd::ConsoleLogger>(100));
    const auto t0 = std::chrono::steady_clock::now();
    const auto summary = trainer.fit(train, &val);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return Result{kd::evaluate_classifier(*student, test, 10).accuracy(), seconds / double(summary.steps)};
  };
  const Result plain = run("kl", kl);
  const Result matched = run("r1", r1);

  std::printf("test accuracy (%lld images, %lld epoch(s) each, same initial student):\n",
              static_cast<long long>(test.size()), static_cast<long long>(epochs));
  std::printf("  plain KL:            %.2f %%  (%.1f ms per step)\n", 100 * plain.accuracy, 1e3 * plain.seconds_per_step);
  std::printf("  R1 gradient matching: %.2f %%  (%.1f ms per step, %.1f x plain KL)\n", 100 * matched.accuracy,
              1e3 * matched.seconds_per_step, matched.seconds_per_step / plain.seconds_per_step);
  std::printf("  teacher:             %.2f %%\n", 100 * kd::evaluate_classifier(*teacher_net, test, 10).accuracy());
  return 0;
} catch (const kd::Error& e) {
  std::cerr << e.what() << "\n";
  return 2;
}
