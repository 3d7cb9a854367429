// Distil a plain CNN student with the three-stage recipe, then train only rank-2 LoRA adapters on its
// two Linear layers for one more stage; the adapters are saved alone and merged into the weights at the
// end (kd-train does the same from configs/lora.json).
//
//   build/examples/lora [limit] [out_dir]   (limit: training images, default all; out_dir: runs/lora_example)
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include <torch/torch.h>

#include "kd/kd.h"

int main(int argc, char** argv) try {
  torch::manual_seed(0);
  const int64_t limit = argc > 1 ? std::atoll(argv[1]) : 0;
  const std::filesystem::path out = argc > 2 ? argv[2] : "runs/lora_example";
  std::filesystem::create_directories(out);
  auto data = kd::data::FashionMnistOptions().limit(limit);
  auto train = kd::data::load_fashion_mnist(kd::data::Split::kTrain, data);
  auto val = kd::data::load_fashion_mnist(kd::data::Split::kValidation, data);
  auto test = kd::data::load_fashion_mnist(kd::data::Split::kTest);

  kd::models::CnnTeacher teacher_net;
  kd::StagedTrainer(kd::Student(teacher_net.ptr()), std::nullopt,
                    {kd::Stage("teacher", torch::nn::AnyModule(kd::HardLabelCE())).epochs(1)})
      .fit(train);

  // The student: the teacher's architecture at a quarter of its widths (16/32 channels, 128 hidden).
  kd::models::CnnTeacher student_net(kd::models::CnnTeacherOptions().width1(16).width2(32).hidden(128));
  // Adapters on fc1 (1568 -> 128) and fc2 (128 -> 10); B starts at zero, so the model is unchanged. The
  // model's Linear layers are kd::nn::Linear, so the adapters are real ones and dropout 0.1 applies to
  // their inputs while training: y = base(x) + (α/r)·B(A(dropout(x))).
  auto lora = kd::lora::apply(student_net.ptr(),
                              kd::lora::Options().rank(2).alpha(4).dropout(0.1).targets({"fc1", "fc2"}));
  const auto adapter = (out / "lora_adapter.pt").string();
  auto hook = std::make_shared<kd::lora::Hook>(lora, kd::lora::HookOptions().save_adapter_to(adapter));

  auto specs = kd::progressive3(kd::Progressive3Options().epochs({1, 1, 1}));
  specs.push_back(kd::StageSpec("lora").epochs(1).hooks({hook}).losses(
      {kd::LossSpec("temperature_kl").name("kl").weight(0.8).set("temperature", 3.0),
       kd::LossSpec("hard_label_ce").name("ce").weight(0.2)}));
  kd::StagedTrainer trainer(kd::Student(student_net.ptr()), kd::Teacher(teacher_net.ptr()), kd::build_stages(specs),
                            kd::StagedTrainerOptions().num_classes(10));
  trainer.add_callback(std::make_shared<kd::ConsoleLogger>(100));
  trainer.fit(train, &val);

  std::cout << "LoRA stage: " << hook->stage_report().to_string() << "\n"
            << "adapter alone: " << adapter << " (" << std::filesystem::file_size(adapter) << " bytes)\n";
  std::printf("test accuracy: teacher %.2f %%, student (adapters merged) %.2f %%\n",
              100 * kd::evaluate_classifier(*teacher_net, test, 10).accuracy(),
              100 * kd::evaluate_classifier(*student_net, test, 10).accuracy());
  return 0;
} catch (const kd::Error& e) {
  std::cerr << e.what() << "\n";
  return 2;
}
