// Distil a CNN teacher into a depthwise-separable student on Fashion-MNIST,
// using the library directly (kd-train does the same from a JSON config).
//
//   build/examples/fashion_mnist [limit]      (limit: training images to use, default all)
#include <cstdlib>
#include <iostream>

#include <torch/torch.h>

#include "kd/kd.h"
#include "kd/data/fashion_mnist.h"
#include "kd/models/cnn.h"
#include "kd/train/console_logger.h"
#include "kd/train/metrics.h"
#include "kd/train/staged_trainer.h"

int main(int argc, char** argv) try {
  torch::manual_seed(0);
  const int64_t limit = argc > 1 ? std::atoll(argv[1]) : 0;
  auto data = kd::data::FashionMnistOptions().limit(limit);
  auto train = kd::data::load_fashion_mnist(kd::data::Split::kTrain, data);
  auto val = kd::data::load_fashion_mnist(kd::data::Split::kValidation, data);
  auto test = kd::data::load_fashion_mnist(kd::data::Split::kTest);

  // 1. No pretrained weights can be downloaded: train the teacher from scratch.
  kd::models::CnnTeacher teacher_net;
  kd::StagedTrainer(kd::Student(teacher_net.ptr()), std::nullopt,
                    {kd::Stage("teacher", torch::nn::AnyModule(kd::HardLabelCE())).epochs(1)})
      .fit(train);

  // 2. Freeze it and distil with the progressive three-stage recipe: feature alignment, then
  //    + attention transfer, then + soft targets at T = 3 and hard labels
  //    (L = L_feat + 0.5·L_attn + 0.8·L_kl + 0.2·L_ce in the last stage).
  kd::Teacher teacher(teacher_net.ptr());
  kd::models::DepthwiseCnnStudent student_net;
  auto stages = kd::build_stages(kd::progressive3(kd::Progressive3Options().epochs({1, 1, 2})));
  kd::StagedTrainer trainer(kd::Student(student_net.ptr()), teacher, stages, kd::StagedTrainerOptions().num_classes(10));
  trainer.add_callback(std::make_shared<kd::ConsoleLogger>(100));
  trainer.fit(train, &val);

  std::cout << "teacher test accuracy " << kd::evaluate_classifier(*teacher_net, test, 10).accuracy() << " ("
            << kd::parameter_count(*teacher_net) << " params)\n"
            << "student test accuracy " << kd::evaluate_classifier(*student_net, test, 10).accuracy() << " ("
            << kd::parameter_count(*student_net) << " params)\n";
  return 0;
} catch (const kd::Error& e) {
  std::cerr << e.what() << "\n";
  return 2;
}
