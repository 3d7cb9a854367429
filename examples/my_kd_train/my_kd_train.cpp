// A kd-train of your own: the whole kd-train command line, plus a loss this program registers.
//
//   cmake -S examples/my_kd_train -B build-mine -DCMAKE_PREFIX_PATH=/usr/local    # where kdistill is installed
//   cmake --build build-mine
//   build-mine/my_kd_train list                  # "margin_kl" among the losses
//   build-mine/my_kd_train distill --config my.json   # a stage may name {"type": "margin_kl", ...}
//
// (No rebuild at all: put the KD_REGISTER_LOSS line in a shared library and load it into the installed
// kd-train with --plugin, as examples/plugin does.)
#include <torch/torch.h>

#include <kd/app/kd_train.h>
#include <kd/kd.h>
#include <kd/losses/registry.h>

namespace {

/// L = T²·KL(p_t^T ‖ p_s^T) over the examples the teacher is sure of (top-1 probability ≥ `margin`), whose soft
/// targets carry the most reliable dark knowledge. Part: "kept", the share of examples that count.
class MarginKLImpl : public torch::nn::Cloneable<MarginKLImpl> {
 public:
  MarginKLImpl(double temperature, double margin) : temperature(temperature), margin(margin) {}
  void reset() override {}
  kd::LossResult forward(const kd::DistillBatch& batch) {
    const auto zt = batch.teacher.logits.detach().flatten(0, -2);
    const auto zs = batch.student.logits.flatten(0, -2);
    const auto log_pt = torch::log_softmax(zt / temperature, -1);
    const auto kl = (log_pt.exp() * (log_pt - torch::log_softmax(zs / temperature, -1))).sum(-1);
    const auto keep = (std::get<0>(torch::softmax(zt, -1).max(-1)) >= margin).to(kl.dtype());
    kd::LossResult r;
    r.total = (kl * keep).sum() / keep.sum().clamp_min(1) * (temperature * temperature);
    r.parts["kept"] = keep.mean();
    return r;
  }
  double temperature, margin;
};
TORCH_MODULE(MarginKL);

}  // namespace

KD_REGISTER_LOSS(
    "margin_kl",
    [](const kd::LossSpec& s) { return MarginKL(s.number("temperature", 2.0), s.number("margin", 0.5)); },
    {"temperature", "margin"}, "T²·KL over the examples whose teacher top-1 probability ≥ margin (examples/my_kd_train)");

int main(int argc, char** argv) { return kd::app::kd_train_main(argc, argv); }
