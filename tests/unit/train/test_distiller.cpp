#include <gtest/gtest.h>

#include "kd/kd.h"
#include "kd/data/fashion_mnist.h"
#include "kd/models/cnn.h"
#include "kd/train/distiller.h"

namespace {

TEST(Distiller, SupervisedTeacherThenDistilledStudentOnAFashionMnistSubset) {
  torch::manual_seed(0);
  auto opts = kd::data::FashionMnistOptions().limit(2048);
  auto train = kd::data::load_fashion_mnist(kd::data::Split::kTrain, opts);
  auto val = kd::data::load_fashion_mnist(kd::data::Split::kValidation, kd::data::FashionMnistOptions().limit(512));

  auto tmodel = kd::models::CnnTeacher(kd::models::CnnTeacherOptions().width1(8).width2(16).hidden(64));
  kd::Distiller supervised(kd::Student(tmodel.ptr()), std::nullopt, torch::nn::AnyModule(kd::HardLabelCE()),
                           kd::DistillerOptions().epochs(2).batch_size(64).log_every(0));
  auto th = supervised.fit(train, &val);
  ASSERT_EQ(th.size(), 2u);
  EXPECT_LT(th[1].mean_loss, th[0].mean_loss);
  EXPECT_GT(th[1].val_accuracy, 0.5);  // 10 classes: chance is 0.1

  kd::Teacher teacher(tmodel.ptr());
  auto smodel = kd::models::DepthwiseCnnStudent();
  kd::Distiller distiller(kd::Student(smodel.ptr()), teacher, torch::nn::AnyModule(kd::TemperatureKL()),
                          kd::DistillerOptions().epochs(2).batch_size(64).log_every(0));
  std::vector<double> progress;
  distiller.on_step = [&](const kd::StepInfo& s, const kd::LossResult& r) {
    progress.push_back(s.progress);
    EXPECT_EQ(r.parts.count("kl"), 1u);
  };
  auto sh = distiller.fit(train, &val);
  EXPECT_LT(sh[1].mean_loss, sh[0].mean_loss);
  EXPECT_GT(sh[1].val_accuracy, 0.4);
  ASSERT_EQ(progress.size(), 64u);  // 2 epochs x 2048/64 steps
  EXPECT_DOUBLE_EQ(progress.front(), 0.0);
  EXPECT_DOUBLE_EQ(progress.back(), 63.0 / 64.0);
  // The teacher was not touched by the student's optimizer.
  for (const auto& p : teacher->parameters()) EXPECT_FALSE(p.grad().defined());
  EXPECT_FALSE(tmodel->is_training());
}

TEST(Distiller, RejectsBadOptions) {
  auto smodel = kd::models::DepthwiseCnnStudent();
  EXPECT_THROW(kd::Distiller(kd::Student(smodel.ptr()), std::nullopt, torch::nn::AnyModule(kd::HardLabelCE()),
                             kd::DistillerOptions().batch_size(0)),
               kd::Error);
  EXPECT_THROW(kd::Distiller(kd::Student(smodel.ptr()), std::nullopt, torch::nn::AnyModule(),
                             kd::DistillerOptions()),
               kd::Error);
}

}  // namespace
