// The default recipe's building blocks on a real Fashion-MNIST subset: a teacher
// trained from scratch, then a student distilled from it.
#include <gtest/gtest.h>

#include "kd/kd.h"
#include "kd/data/fashion_mnist.h"
#include "kd/models/cnn.h"
#include "kd/train/metrics.h"
#include "kd/train/staged_trainer.h"

namespace {

TEST(FashionMnistRecipe, TeacherFromScratchThenDistilledStudentLearn) {
  torch::manual_seed(0);
  auto train = kd::data::load_fashion_mnist(kd::data::Split::kTrain, kd::data::FashionMnistOptions().limit(2048));
  auto val = kd::data::load_fashion_mnist(kd::data::Split::kValidation, kd::data::FashionMnistOptions().limit(512));

  auto tmodel = kd::models::CnnTeacher(kd::models::CnnTeacherOptions().width1(8).width2(16).hidden(64));
  auto th = kd::StagedTrainer(kd::Student(tmodel.ptr()), std::nullopt,
                              {kd::Stage("teacher", torch::nn::AnyModule(kd::HardLabelCE())).epochs(2)},
                              kd::StagedTrainerOptions().batch_size(64).num_classes(10))
                .fit(train, &val);
  ASSERT_EQ(th.evaluations.size(), 1u);
  EXPECT_GT(th.evaluations[0].metrics.at("accuracy"), 0.5);  // ten classes: chance is 0.1

  kd::Teacher teacher(tmodel.ptr());
  auto smodel = kd::models::DepthwiseCnnStudent();
  const double before = kd::evaluate_classifier(*smodel, val, 10).accuracy();
  auto sh = kd::StagedTrainer(kd::Student(smodel.ptr()), teacher,
                              {kd::Stage("kl", torch::nn::AnyModule(kd::TemperatureKL())).epochs(2)},
                              kd::StagedTrainerOptions().batch_size(64).num_classes(10))
                .fit(train, &val);
  const double after = sh.evaluations.back().metrics.at("accuracy");
  EXPECT_GT(after, 0.4);
  EXPECT_GT(after, before + 0.2);
  EXPECT_NEAR(after, kd::evaluate_classifier(*smodel, val, 10).accuracy(), 1e-12);
  for (const auto& p : teacher->parameters()) EXPECT_FALSE(p.grad().defined());
  EXPECT_FALSE(tmodel->is_training());
}

}  // namespace
