// Links the installed kdistill and distills one step between two tiny models.
#include <iostream>

#include <kd/kd.h>
#include <torch/torch.h>

struct TinyImpl : kd::Model {
  explicit TinyImpl(int64_t hidden) {
    fc1 = register_module("fc1", torch::nn::Linear(8, hidden));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, 3));
  }
  kd::ModelOutput forward(const torch::Tensor& x) override {
    kd::ModelOutput out;
    out.hidden_states.push_back(torch::relu(fc1->forward(x)));
    out.logits = fc2->forward(out.hidden_states.back());
    return out;
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

int main() {
  torch::manual_seed(0);
  kd::Teacher teacher(std::make_shared<TinyImpl>(32));
  kd::Student student(std::make_shared<TinyImpl>(4));
  kd::TemperatureKL kl(kd::TemperatureKLOptions().temperature(2.0));
  torch::optim::SGD opt(student->parameters(), torch::optim::SGDOptions(0.1));

  auto x = torch::randn({16, 8});
  kd::DistillBatch batch;
  batch.teacher = teacher->forward(x);
  double first = 0, last = 0;
  for (int step = 0; step < 20; ++step) {
    batch.student = student->forward(x);
    kd::LossResult r = kl->forward(batch);
    opt.zero_grad();
    r.total.backward();
    opt.step();
    (step == 0 ? first : last) = r.total.item<double>();
  }
  std::cout << "kdistill consumer: KL " << first << " -> " << last << "\n";
  return last < first ? 0 : 1;
}
