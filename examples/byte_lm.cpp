// Distil a byte-level causal language model (4 layers, d 192) into a smaller one (2 layers, d 96) on
// the SpamAssassin mails: per-token KL between the two next-byte distributions plus the next-byte
// cross-entropy. Prints the teacher's and the student's samples (temperature + top-k) before and
// after distillation, and bits per byte on validation windows. kd-train does the same from
// configs/byte_lm.json.
//
//   build/examples/byte_lm [teacher_steps] [student_steps] [context] [eval_windows]
//     defaults 1000, 1000, 128 bytes per window, 512 validation windows.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>

#include <torch/torch.h>

#include "kd/kd.h"

namespace {

// `tokens` bytes after the prompt, sampled at T = 0.8 from the 20 likeliest (same seed for every model).
std::string sample(kd::models::CausalLM& lm, const std::string& prompt, int64_t tokens) {
  return kd::models::printable_bytes(lm->generate(kd::models::byte_tokens(prompt), tokens,
                                                  kd::models::GenerateOptions().temperature(0.8).top_k(20).seed(0)));
}

}  // namespace

int main(int argc, char** argv) try {
  torch::manual_seed(0);
  const int64_t teacher_steps = argc > 1 ? std::atoll(argv[1]) : 1000;
  const int64_t student_steps = argc > 2 ? std::atoll(argv[2]) : 1000;
  const int64_t context = argc > 3 ? std::atoll(argv[3]) : 128;
  const int64_t eval_windows = argc > 4 ? std::atoll(argv[4]) : 512;

  // Windows of context + 1 bytes: inputs window[:-1], targets window[1:] ([N, context] each).
  kd::data::SpamAssassin corpus(kd::data::SpamAssassinOptions().context(context));
  auto train = corpus.language_model(kd::data::Split::kTrain);
  auto val = corpus.language_model(kd::data::Split::kValidation);
  val = val.select(torch::arange(std::min(eval_windows, val.size()), torch::kLong));
  std::printf("SpamAssassin bytes: %lld training windows of %lld bytes, %lld validation windows\n",
              static_cast<long long>(train.size()), static_cast<long long>(context), static_cast<long long>(val.size()));

  const auto options = kd::StagedTrainerOptions().batch_size(16).warmup_steps(100);  // LM evaluation: bits per byte
  auto lm = [&](int64_t layers, int64_t d_model, int64_t heads) {
    return kd::models::CausalLM(
        kd::models::CausalLMOptions().layers(layers).d_model(d_model).heads(heads).max_len(context));
  };

  // 1. The teacher, from scratch: next-byte cross-entropy (HardLabelCE over [B, L, 256] logits).
  auto teacher_net = lm(4, 192, 3);
  kd::StagedTrainer teacher_trainer(kd::Student(teacher_net.ptr()), std::nullopt,
                                    {kd::Stage("teacher", torch::nn::AnyModule(kd::HardLabelCE())).steps(teacher_steps)},
                                    options);
  teacher_trainer.add_callback(std::make_shared<kd::ConsoleLogger>(100));
  teacher_trainer.fit(train, &val);

  auto student_net = lm(2, 96, 2);
  const std::string prompt = "Subject: ";
  std::printf("\nteacher:\n%s\n\nstudent before distillation:\n%s\n\n", sample(teacher_net, prompt, 160).c_str(),
              sample(student_net, prompt, 160).c_str());

  // 2. Per-token KL at T = 1 (TemperatureKL over [B, L, V], computed in chunks) + next-byte cross-entropy.
  auto specs = std::vector<kd::StageSpec>{kd::StageSpec("distill").steps(student_steps).losses(
      {kd::LossSpec("temperature_kl").name("kl").weight(0.5).set("temperature", 1.0),
       kd::LossSpec("hard_label_ce").name("ce").weight(0.5)})};
  kd::StagedTrainer trainer(kd::Student(student_net.ptr()), kd::Teacher(teacher_net.ptr()), kd::build_stages(specs),
                            options);
  trainer.add_callback(std::make_shared<kd::ConsoleLogger>(100));
  trainer.fit(train, &val);

  std::printf("\nstudent after distillation:\n%s\n\n", sample(student_net, prompt, 160).c_str());
  const auto t = kd::evaluate_language_model(*teacher_net, val);
  const auto s = kd::evaluate_language_model(*student_net, val);
  std::printf("validation (%lld bytes): teacher %lld params: %.4f bits/byte; student %lld params: %.4f bits/byte\n",
              static_cast<long long>(t.tokens), static_cast<long long>(kd::parameter_count(*teacher_net)),
              t.bits_per_byte(), static_cast<long long>(kd::parameter_count(*student_net)), s.bits_per_byte());
  return 0;
} catch (const kd::Error& e) {
  std::cerr << e.what() << "\n";
  return 2;
}
