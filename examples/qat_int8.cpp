// Distil a depthwise-separable student in float with the three-stage recipe, fine-tune it with
// quantization-aware training in a fourth stage, write an int8 file, and score that file after
// loading it into a fresh student (kd-train does the same from configs/qat.json).
//
//   build/examples/qat_int8 [limit] [out_dir]   (limit: training images, default all; out_dir: runs/qat_int8)
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include <torch/torch.h>

#include "kd/kd.h"

int main(int argc, char** argv) try {
  torch::manual_seed(0);
  const int64_t limit = argc > 1 ? std::atoll(argv[1]) : 0;
  const std::filesystem::path out = argc > 2 ? argv[2] : "runs/qat_int8";
  std::filesystem::create_directories(out);
  auto data = kd::data::FashionMnistOptions().limit(limit);
  auto train = kd::data::load_fashion_mnist(kd::data::Split::kTrain, data);
  auto val = kd::data::load_fashion_mnist(kd::data::Split::kValidation, data);
  auto test = kd::data::load_fashion_mnist(kd::data::Split::kTest);

  kd::models::CnnTeacher teacher_net;
  kd::StagedTrainer(kd::Student(teacher_net.ptr()), std::nullopt,
                    {kd::Stage("teacher", torch::nn::AnyModule(kd::HardLabelCE())).epochs(1)})
      .fit(train);

  // The student calls kd::qat::FakeQuantize placeholders at its activation points (identities until
  // QAT switches them on). prepare() finds those and every Conv/Linear weight; the hook keeps the
  // model in float until a stage that lists it begins.
  auto student_options = kd::models::DepthwiseCnnStudentOptions().activation_quant(true);
  kd::models::DepthwiseCnnStudent student_net(student_options);
  auto qat = kd::qat::prepare(student_net.ptr(), kd::qat::Options().per_channel(true).narrow_range(true));
  auto hook = std::make_shared<kd::qat::Hook>(qat, kd::qat::HookOptions().freeze_observers_at(0.5));

  // Stages 1-3 in float, then QAT at a low lr: observers run for the first half, then freeze.
  auto specs = kd::progressive3(kd::Progressive3Options().epochs({1, 1, 1}));
  specs.push_back(kd::StageSpec("qat").epochs(1).lr(2e-4).hooks({hook}).losses(
      {kd::LossSpec("temperature_kl").name("kl").weight(0.8).set("temperature", 3.0),
       kd::LossSpec("hard_label_ce").name("ce").weight(0.2)}));

  // The float student before QAT, measured when stage 3 ends: what the int8 file is compared with.
  struct FloatScore : kd::Callback {
    FloatScore(kd::Model& m, const kd::data::TensorDataset& t) : model(m), test(t) {}
    void on_stage_end(const kd::Stage& s, const kd::StepInfo&) override {
      if (s.name() == "logits") accuracy = kd::evaluate_classifier(model, test, 10).accuracy();
    }
    kd::Model& model;
    const kd::data::TensorDataset& test;
    double accuracy = 0;
  };
  auto float_score = std::make_shared<FloatScore>(*student_net, test);
  kd::StagedTrainer trainer(kd::Student(student_net.ptr()), kd::Teacher(teacher_net.ptr()), kd::build_stages(specs),
                            kd::StagedTrainerOptions().num_classes(10));
  trainer.add_callback(std::make_shared<kd::ConsoleLogger>(100));
  trainer.add_callback(float_score);
  trainer.fit(train, &val);

  const auto path = (out / "student.int8.pt").string();
  const auto written = kd::qat::export_int8(*student_net, *qat, path);
  kd::models::DepthwiseCnnStudent fresh(student_options);  // a new model: nothing carried over but the file
  kd::qat::load_int8(*fresh, path);
  const double fake_quant = kd::evaluate_classifier(*student_net, test, 10).accuracy();
  const double int8 = kd::evaluate_classifier(*fresh, test, 10).accuracy();

  std::cout << written.to_string() << " -> " << path << "\n";
  std::printf("test accuracy: float before QAT %.2f %%, fake-quant %.2f %%, int8 file %.2f %%\n",
              100 * float_score->accuracy, 100 * fake_quant, 100 * int8);
  return 0;
} catch (const kd::Error& e) {
  std::cerr << e.what() << "\n";
  return 2;
}
