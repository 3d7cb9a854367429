// Distil a 6-layer byte-level transformer encoder into a 2-layer one on the SpamAssassin corpus
// (spam/ham), with the three phases on token models: hidden-state L2 (teacher layers 3 and 6 ->
// student layers 1 and 2, the student's 64 dimensions projected to the teacher's 128), + attention
// MSE (the teacher's 4 heads averaged in pairs onto the student's 2), + soft targets at T = 3 and hard
// labels. kd-train does the same from configs/spam_transformer.json.
//
//   build/examples/spam_transformer [limit] [teacher_epochs] [student_epochs] [max_len]
//     limit: mails per split (default all); epochs: teacher 4, student 1 + 1 + 3 (the last stage's);
//     max_len: bytes per mail (default 128). The corpus comes from scripts/setup (npm).
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include <torch/torch.h>

#include "kd/kd.h"

int main(int argc, char** argv) try {
  torch::manual_seed(0);
  const int64_t limit = argc > 1 ? std::atoll(argv[1]) : 0;
  const int64_t teacher_epochs = argc > 2 ? std::atoll(argv[2]) : 4;
  const int64_t student_epochs = argc > 3 ? std::atoll(argv[3]) : 3;
  const int64_t max_len = argc > 4 ? std::atoll(argv[4]) : 128;

  // Mails as bytes: inputs [N, max_len] (padded with byte 0), mask [N, max_len], targets 1 = spam.
  kd::data::SpamAssassin corpus(kd::data::SpamAssassinOptions().max_len(max_len).limit(limit));
  auto train = corpus.classification(kd::data::Split::kTrain);
  auto val = corpus.classification(kd::data::Split::kValidation);
  auto test = corpus.classification(kd::data::Split::kTest);
  std::printf("SpamAssassin: %lld train, %lld validation, %lld test mails (first %lld bytes)\n",
              static_cast<long long>(train.size()), static_cast<long long>(val.size()),
              static_cast<long long>(test.size()), static_cast<long long>(max_len));

  auto encoder = [&](int64_t layers, int64_t d_model, int64_t heads) {
    return kd::models::TransformerEncoder(kd::models::TransformerEncoderOptions()
                                              .layers(layers)
                                              .d_model(d_model)
                                              .heads(heads)
                                              .pad_token(0)  // padding is masked out of attention and pooling
                                              .num_classes(2)
                                              .max_len(max_len));
  };
  const auto options = kd::StagedTrainerOptions().num_classes(2).batch_size(32).warmup_steps(50);

  // 1. No pretrained weights can be downloaded: train the teacher from scratch.
  auto teacher_net = encoder(6, 128, 4);
  kd::StagedTrainer teacher_trainer(
      kd::Student(teacher_net.ptr()), std::nullopt,
      {kd::Stage("teacher", torch::nn::AnyModule(kd::HardLabelCE())).epochs(teacher_epochs).lr(5e-4)}, options);
  teacher_trainer.add_callback(std::make_shared<kd::ConsoleLogger>(50));
  teacher_trainer.fit(train, &val);

  // 2. The three phases with the layer pairs of a 6 -> 2 layer encoder. The trainer hands the padding
  //    mask to every loss, so padded bytes count in none of them.
  auto student_net = encoder(2, 64, 2);
  auto specs = kd::progressive3(kd::Progressive3Options()
                                    .teacher_layers({2, 5})
                                    .student_layers({0, 1})
                                    .student_dims({64, 64})
                                    .teacher_dims({128, 128})
                                    .attention_teacher_layers({2, 5})
                                    .attention_student_layers({0, 1})
                                    .epochs({1, 1, student_epochs}));
  kd::StagedTrainer trainer(kd::Student(student_net.ptr()), kd::Teacher(teacher_net.ptr()), kd::build_stages(specs),
                            options);
  trainer.add_callback(std::make_shared<kd::ConsoleLogger>(50));
  trainer.fit(train, &val);

  const auto t = kd::evaluate_classifier(*teacher_net, test, 2);
  const auto s = kd::evaluate_classifier(*student_net, test, 2);
  const double tp = kd::parameter_count(*teacher_net), sp = kd::parameter_count(*student_net);
  std::printf("test (%lld mails): teacher %.0f params: accuracy %.2f %%, macro-F1 %.4f\n",
              static_cast<long long>(test.size()), tp, 100 * t.accuracy(), t.macro_f1());
  std::printf("                   student %.0f params (%.1f %%): accuracy %.2f %%, macro-F1 %.4f (%+.2f points)\n", sp,
              100 * sp / tp, 100 * s.accuracy(), s.macro_f1(), 100 * (s.macro_f1() - t.macro_f1()));
  return 0;
} catch (const kd::Error& e) {
  std::cerr << e.what() << "\n";
  return 2;
}
