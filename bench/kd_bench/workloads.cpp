#include "workloads.h"

#include <chrono>
#include <filesystem>
#include <stdexcept>
#include <unistd.h>

#include <torch/torch.h>

#include "flops.h"
#include "frozen_cnn.h"
#include "kd/core/teacher.h"
#include "kd/data/teacher_cache.h"
#include "kd/losses/attention_mse.h"
#include "kd/losses/feature_l2.h"
#include "kd/losses/hard_label_ce.h"
#include "kd/losses/temperature_kl.h"
#include "kd/models/causal_lm.h"
#include "kd/models/cnn.h"
#include "kd/models/transformer_encoder.h"

namespace kd::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Adds the seconds since `t` to `acc` and restarts `t` (CPU ops are synchronous, so this is the phase's time).
void lap(Clock::time_point& t, double& acc) {
  const auto now = Clock::now();
  acc += std::chrono::duration<double>(now - t).count();
  t = now;
}

// The soft-target loss T²/N · Σ_rows KL(p_t ‖ p_s), as options.kl says to compute it.
torch::Tensor soft_kl(const torch::Tensor& student, const torch::Tensor& teacher, double T, const std::string& how) {
  if (how == "autograd") {  // the textbook form: autograd through log_softmax and kl_div
    const auto V = student.size(-1);
    const auto s = torch::log_softmax(student.reshape({-1, V}) / T, -1);
    const auto t = torch::log_softmax(teacher.reshape({-1, V}) / T, -1);
    return torch::kl_div(s, t, at::Reduction::Sum, /*log_target=*/true) * (T * T / static_cast<double>(s.size(0)));
  }
  return functional::temperature_kl(student, teacher,
                                    TemperatureKLOptions().temperature(T).chunk_size(how == "chunked" ? 64 : 0));
}

// Gradients to "none" rather than zero-filled (what Python's zero_grad(set_to_none=True) does).
void clear_grads(torch::optim::Optimizer& opt) {
  for (auto& group : opt.param_groups()) {
    for (auto& p : group.params()) p.mutable_grad() = torch::Tensor();
  }
}

// The part every workload's step ends with: the loss phase's lap, backward, the update, gradients to none.
double finish_step(const torch::Tensor& loss, torch::optim::Optimizer& opt, Clock::time_point& t, PhaseTimes& times) {
  lap(t, times.loss);
  loss.backward();
  lap(t, times.backward);
  opt.step();
  clear_grads(opt);
  lap(t, times.optimizer);
  return loss.item<double>();
}

// Inference tensors cannot be saved for backward: the teacher outputs the losses read become normal tensors.
torch::Tensor as_normal(const torch::Tensor& t) { return t.is_inference() ? t.clone() : t; }

ModelOutput run_teacher(Teacher& teacher, const torch::Tensor& x, bool inference_mode) {
  if (!inference_mode) return teacher->forward(x);
  c10::InferenceMode guard;
  return teacher->forward(x);
}

std::vector<torch::Tensor> all_parameters(std::initializer_list<const torch::nn::Module*> modules) {
  std::vector<torch::Tensor> params;
  for (const auto* m : modules) {
    for (const auto& p : m->parameters()) params.push_back(p);
  }
  return params;
}

/// W1: CnnTeacher → DepthwiseCnnStudent, batch 128 of [1, 28, 28], 10 classes;
/// L = 0.9·KL(T=4)·T² + 0.1·CE + MSE(1×1-conv 32→64 of the student's last pooled map, the teacher's), AdamW 1e-3.
class W1 : public Workload {
 public:
  explicit W1(const BenchOptions& o) : o_(o) {
    if (o.mode != "online" && o.mode != "cached") throw std::invalid_argument("w1 mode must be online or cached");
    if ((o.channels_last || o.mkldnn) && !o.fold_bn) throw std::invalid_argument("--channels-last/--mkldnn need --fold-bn 1");
    torch::manual_seed(static_cast<int64_t>(o.seed));
    teacher_net_ = models::CnnTeacher(models::CnnTeacherOptions().attention_maps(false));
    teacher_ = Teacher(teacher_net_.ptr());
    if (o.fold_bn) frozen_ = FrozenCnnTeacher(*teacher_net_, o.channels_last, o.mkldnn);
    student_ = models::DepthwiseCnnStudent(models::DepthwiseCnnStudentOptions().attention_maps(false));
    feat_ = FeatureL2(FeatureL2Options({{/*teacher=*/1, /*student=*/1, 1.0, /*student_dim=*/32, /*teacher_dim=*/64}}));
    opt_ = std::make_unique<torch::optim::AdamW>(all_parameters({student_.get(), feat_.get()}),
                                                 torch::optim::AdamWOptions(1e-3));
    images_ = torch::randn({o.pool_batches * kBatch, 1, 28, 28});
    labels_ = torch::randint(0, 10, {o.pool_batches * kBatch}, torch::kInt64);
    if (o.mode == "cached") build_cache();
  }
  ~W1() override {
    cache_.reset();
    if (!cache_path_.empty()) std::filesystem::remove(cache_path_);
  }

  int64_t batch_size() const override { return kBatch; }
  double flops_per_step() const override {
    return kBatch * ((cache_ ? 0.0 : flops::w1_teacher_per_image()) + 3.0 * flops::w1_student_per_image());
  }
  double setup_seconds() const override { return cache_build_s_; }

  double step(int64_t step, PhaseTimes& times) override {
    const int64_t b = step % o_.pool_batches;
    const auto x = images_.narrow(0, b * kBatch, kBatch), y = labels_.narrow(0, b * kBatch, kBatch);
    auto t = Clock::now();
    DistillBatch batch;
    batch.teacher = teacher_outputs(x, b);
    lap(t, times.teacher);
    batch.student = student_->forward(x);
    lap(t, times.student);
    const auto loss = 0.9 * soft_kl(batch.student.logits, batch.teacher.logits, 4.0, o_.kl) +
                      0.1 * functional::hard_label_ce(batch.student.logits, y) + feat_->forward(batch).total;
    return finish_step(loss, *opt_, t, times);
  }

 private:
  static constexpr int64_t kBatch = 128;

  ModelOutput teacher_outputs(const torch::Tensor& x, int64_t b) {
    if (cache_) return cache_->lookup(torch::arange(b * kBatch, (b + 1) * kBatch, torch::kInt64));
    ModelOutput out;
    if (frozen_) {
      if (o_.inference_mode) {
        c10::InferenceMode guard;
        out = frozen_->forward(x);
      } else {
        torch::NoGradGuard no_grad;
        out = frozen_->forward(x);
      }
    } else {
      out = run_teacher(teacher_, x, o_.inference_mode);
    }
    out.logits = as_normal(out.logits);
    out.hidden_states[1] = as_normal(out.hidden_states[1]);
    return out;
  }

  // Epoch 1 runs the teacher over the pool and writes the cache (not timed as steps); epochs 2+ read it.
  void build_cache() {
    const auto start = Clock::now();
    cache_path_ = (std::filesystem::temp_directory_path() / ("kd_bench_w1_" + std::to_string(::getpid()) + ".cache")).string();
    data::TensorDataset pool{images_, labels_, {}};
    const auto options = data::TeacherCacheOptions().hidden_states({1});
    data::TeacherCache::build(cache_path_, teacher_, pool, options);
    cache_ = data::TeacherCache::open(cache_path_, data::module_fingerprint(*teacher_net_),
                                      data::dataset_fingerprint(pool), options);
    cache_build_s_ = std::chrono::duration<double>(Clock::now() - start).count();
  }

  BenchOptions o_;
  models::CnnTeacher teacher_net_{nullptr};
  Teacher teacher_{nullptr};
  FrozenCnnTeacher frozen_{nullptr};
  models::DepthwiseCnnStudent student_{nullptr};
  FeatureL2 feat_{nullptr};
  std::unique_ptr<torch::optim::AdamW> opt_;
  torch::Tensor images_, labels_;
  std::unique_ptr<data::TeacherCache> cache_;
  std::string cache_path_;
  double cache_build_s_ = 0.0;
};

/// W2: TransformerEncoder 6×256 (4 heads, ffn 1024) → 2×128 (2 heads, ffn 512), batch 32 × 128 bytes, 2 classes;
/// L = KL(T=2)·T² + Σ_i MSE(P_i(h_s,i), h_t,3i) + Σ_i MSE(mean_h A_s,i, mean_h A_t,3i), i = 1, 2 (layers from 1).
class W2 : public Workload {
 public:
  explicit W2(const BenchOptions& o) : o_(o) {
    if (o.mode != "online") throw std::invalid_argument("w2 has only the online mode");
    torch::manual_seed(static_cast<int64_t>(o.seed));
    const auto base = models::TransformerEncoderOptions().vocab(256).num_classes(2).dropout(0.0);
    teacher_ = Teacher(models::TransformerEncoder(
        models::TransformerEncoderOptions(base).layers(6).d_model(256).heads(4).ffn(1024)).ptr());
    student_ = models::TransformerEncoder(models::TransformerEncoderOptions(base).layers(2).d_model(128).heads(2).ffn(512));
    // hidden_states / attentions are 0-based: student layer i ↔ teacher layer 3i (from 1) is (3i−1, i−1).
    feat_ = FeatureL2(FeatureL2Options({{2, 0, 1.0, 128, 256}, {5, 1, 1.0, 128, 256}}));
    attn_ = AttentionMSE(AttentionMSEOptions({{2, 0}, {5, 1}}).heads(HeadMapping::kMean));
    opt_ = std::make_unique<torch::optim::AdamW>(all_parameters({student_.get(), feat_.get()}),
                                                 torch::optim::AdamWOptions(1e-3));
    tokens_ = torch::randint(0, 256, {o.pool_batches * kBatch, kLen}, torch::kInt64);
  }
  int64_t batch_size() const override { return kBatch; }
  double flops_per_step() const override {
    const double teacher = 6 * flops::block(kBatch, kLen, 256, 1024) + flops::matmul(kBatch, 2, 256);
    const double student = 2 * flops::block(kBatch, kLen, 128, 512) + flops::matmul(kBatch, 2, 128) +
                           2 * flops::matmul(kBatch * kLen, 256, 128);
    return teacher + 3.0 * student;
  }
  double step(int64_t step, PhaseTimes& times) override {
    const auto x = tokens_.narrow(0, (step % o_.pool_batches) * kBatch, kBatch);
    auto t = Clock::now();
    DistillBatch batch;
    batch.teacher = run_teacher(teacher_, x, o_.inference_mode);
    batch.teacher.logits = as_normal(batch.teacher.logits);
    for (int i : {2, 5}) {
      batch.teacher.hidden_states[i] = as_normal(batch.teacher.hidden_states[i]);
      batch.teacher.attentions[i] = as_normal(batch.teacher.attentions[i]);
    }
    lap(t, times.teacher);
    batch.student = student_->forward(x);
    lap(t, times.student);
    const auto loss = soft_kl(batch.student.logits, batch.teacher.logits, 2.0, o_.kl) + feat_->forward(batch).total +
                      attn_->forward(batch).total;
    return finish_step(loss, *opt_, t, times);
  }

 private:
  static constexpr int64_t kBatch = 32, kLen = 128;
  BenchOptions o_;
  Teacher teacher_{nullptr};
  models::TransformerEncoder student_{nullptr};
  FeatureL2 feat_{nullptr};
  AttentionMSE attn_{nullptr};
  std::unique_ptr<torch::optim::AdamW> opt_;
  torch::Tensor tokens_;
};

/// W3: CausalLM 6×384 (6 heads) → 2×192 (3 heads), batch 8 × 256 bytes, vocabulary 256;
/// L = per-token forward KL(p_t ‖ p_s) at T = 1 over all B·L positions, AdamW 1e-3.
class W3 : public Workload {
 public:
  explicit W3(const BenchOptions& o) : o_(o) {
    if (o.mode != "online") throw std::invalid_argument("w3 has only the online mode");
    torch::manual_seed(static_cast<int64_t>(o.seed));
    const auto base = models::CausalLMOptions().vocab(256).dropout(0.0);
    teacher_ = Teacher(models::CausalLM(models::CausalLMOptions(base).layers(6).d_model(384).heads(6)).ptr());
    student_ = models::CausalLM(models::CausalLMOptions(base).layers(2).d_model(192).heads(3));
    opt_ = std::make_unique<torch::optim::AdamW>(student_->parameters(), torch::optim::AdamWOptions(1e-3));
    tokens_ = torch::randint(0, 256, {o.pool_batches * kBatch, kLen}, torch::kInt64);
  }
  int64_t batch_size() const override { return kBatch; }
  double flops_per_step() const override {
    const int64_t N = kBatch * kLen;
    const double teacher = 6 * flops::block(kBatch, kLen, 384, 1536) + flops::matmul(N, 256, 384);
    const double student = 2 * flops::block(kBatch, kLen, 192, 768) + flops::matmul(N, 256, 192);
    return teacher + 3.0 * student;
  }
  double step(int64_t step, PhaseTimes& times) override {
    const auto x = tokens_.narrow(0, (step % o_.pool_batches) * kBatch, kBatch);
    auto t = Clock::now();
    const auto teacher_logits = as_normal(run_teacher(teacher_, x, o_.inference_mode).logits);
    lap(t, times.teacher);
    const auto student_logits = student_->forward(x).logits;
    lap(t, times.student);
    const auto loss = soft_kl(student_logits, teacher_logits, 1.0, o_.kl);
    return finish_step(loss, *opt_, t, times);
  }

 private:
  static constexpr int64_t kBatch = 8, kLen = 256;
  BenchOptions o_;
  Teacher teacher_{nullptr};
  models::CausalLM student_{nullptr};
  std::unique_ptr<torch::optim::AdamW> opt_;
  torch::Tensor tokens_;
};

}  // namespace

std::unique_ptr<Workload> make_workload(const BenchOptions& o) {
  if (o.kl != "fused" && o.kl != "chunked" && o.kl != "autograd") {
    throw std::invalid_argument("--kl must be fused, chunked or autograd");
  }
  if (o.workload == "w1") return std::make_unique<W1>(o);
  if (o.workload == "w2") return std::make_unique<W2>(o);
  if (o.workload == "w3") return std::make_unique<W3>(o);
  throw std::invalid_argument("unknown workload '" + o.workload + "' (w1, w2, w3)");
}

}  // namespace kd::bench
