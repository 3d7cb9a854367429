#include "kd/train/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <optional>
#include <regex>
#include <sstream>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include "kd/io/archive_file.h"
#include "kd/io/atomic_file.h"
#include "kd/detail/file_sync.h"
#include "kd/core/error.h"

namespace kd {
namespace fs = std::filesystem;
namespace {

const std::regex& name_pattern() {
  static const std::regex re(R"(ckpt-(\d{10})-([0-9a-f]{8})\.pt)");
  return re;
}

torch::Tensor string_tensor(const std::string& s) {
  auto t = torch::empty({static_cast<int64_t>(s.size())}, torch::kUInt8);
  // An empty tensor's data pointer is null, and memcpy's arguments must not be, even for 0 bytes (UBSan).
  if (!s.empty()) std::memcpy(t.data_ptr<uint8_t>(), s.data(), s.size());
  return t;
}

std::string tensor_string(const torch::Tensor& t) {
  auto c = t.contiguous();
  if (c.numel() == 0) return std::string();
  return std::string(reinterpret_cast<const char*>(c.data_ptr<uint8_t>()), static_cast<size_t>(c.numel()));
}

// CUDA generators, one per device (none on a CPU-only build or machine).
std::vector<at::Generator> cuda_generators() {
  std::vector<at::Generator> out;
  if (!torch::cuda::is_available()) return out;
  for (int64_t d = 0; d < static_cast<int64_t>(torch::cuda::device_count()); ++d) {
    out.push_back(at::globalContext().defaultGenerator(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(d))));
  }
  return out;
}

}  // namespace

CheckpointManager::CheckpointManager(CheckpointOptions options) : options_(std::move(options)) {
  if (options_.keep_last() < 1) {
    throw Error(ErrorCategory::kValue, fmt::format("CheckpointOptions.keep_last must be >= 1, got {}", options_.keep_last()));
  }
  std::error_code ec;
  fs::create_directories(options_.dir(), ec);
  if (ec || !fs::is_directory(options_.dir())) {
    throw Error(ErrorCategory::kFile, fmt::format("cannot create checkpoint folder '{}': {}", options_.dir(),
                                                  ec ? ec.message() : "not a folder"));
  }
  // A save that a crash interrupted leaves a staging file (or its temporary): never a checkpoint.
  for (const auto& e : fs::directory_iterator(options_.dir(), ec)) {
    if (e.path().filename().string().rfind(".staging-", 0) == 0) fs::remove(e.path(), ec);
  }
}

std::string CheckpointManager::save(const TrainingState& state, const CheckpointContents& contents) {
  torch::serialize::OutputArchive archive;
  const auto meta = torch::tensor({state.global_step, state.stage_index, state.stage_step, state.epoch,
                                   state.batch_in_epoch, state.nonfinite_steps, state.rollbacks},
                                  torch::kInt64);
  archive.write("meta", meta);
  archive.write("lr_scale", torch::tensor({state.lr_scale}, torch::kFloat64));
  archive.write("fingerprint", string_tensor(state.config_fingerprint));
  if (!state.stage_fingerprints.empty()) {
    std::string joined;
    for (const auto& f : state.stage_fingerprints) joined += f + "\n";
    archive.write("stage_fingerprints", string_tensor(joined));
  }
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    archive.write("rng_cpu", gen.get_state());
  }
  const auto cuda = cuda_generators();
  for (size_t d = 0; d < cuda.size(); ++d) {
    auto gen = cuda[d];
    std::lock_guard<std::mutex> lock(gen.mutex());
    archive.write(fmt::format("rng_cuda{}", d), gen.get_state());
  }
  auto sub = [&](const char* key, auto save_into) {
    torch::serialize::OutputArchive a;
    save_into(a);
    archive.write(key, a);
  };
  if (contents.student) sub("student", [&](auto& a) { contents.student->save(a); });
  if (contents.loss) sub("loss", [&](auto& a) { contents.loss->save(a); });
  if (contents.optimizer) sub("optimizer", [&](auto& a) { contents.optimizer->save(a); });
  if (contents.ema) sub("ema", [&](auto& a) { contents.ema->save(a); });

  // The checksum goes into the final name, so it is computed on the temporary file first.
  const fs::path staging = fs::path(options_.dir()) / fmt::format(".staging-{}.pt", state.global_step);
  std::string final_path;
  save_archive_atomically(archive, staging.string());
  final_path = (fs::path(options_.dir()) /
                fmt::format("ckpt-{:010d}-{:08x}.pt", state.global_step, detail::file_crc32(staging.string())))
                   .string();
  std::error_code ec;
  fs::rename(staging, final_path, ec);
  if (ec) {
    fs::remove(staging, ec);
    throw Error(ErrorCategory::kFile, fmt::format("cannot move checkpoint into place at '{}'", final_path));
  }
  detail::fsync_directory(options_.dir());  // the rename itself must survive a power cut

  auto all = list();
  while (static_cast<int64_t>(all.size()) > options_.keep_last()) {
    fs::remove(all.front(), ec);
    all.erase(all.begin());
  }
  return final_path;
}

std::vector<std::string> CheckpointManager::list() const {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(options_.dir())) {
    if (e.is_regular_file() && std::regex_match(e.path().filename().string(), name_pattern())) {
      out.push_back(e.path().string());
    }
  }
  std::sort(out.begin(), out.end());  // zero-padded steps sort by name
  return out;
}

std::optional<std::string> CheckpointManager::latest() const {
  auto all = list();
  if (all.empty()) return std::nullopt;
  return all.back();
}

std::optional<std::string> CheckpointManager::previous_of(const std::string& path) const {
  std::optional<std::string> prev;
  for (const auto& p : list()) {
    if (p >= path) break;
    prev = p;
  }
  return prev;
}

TrainingState CheckpointManager::load(const std::string& path, const CheckpointContents& contents,
                                      const std::string& expected_fingerprint) const {
  return read(path, &contents, expected_fingerprint);
}

TrainingState CheckpointManager::read_state(const std::string& path) const { return read(path, nullptr, ""); }

TrainingState CheckpointManager::read(const std::string& path, const CheckpointContents* contents,
                                      const std::string& expected_fingerprint) const {
  std::smatch m;
  const std::string name = fs::path(path).filename().string();
  if (!fs::is_regular_file(path)) {
    throw Error(ErrorCategory::kFile, fmt::format("checkpoint '{}' does not exist", path));
  }
  auto refuse = [&](const std::string& why) {
    const auto prev = previous_of(path);
    return Error(ErrorCategory::kFormat,
                 fmt::format("checkpoint '{}' is unusable: {}; {}", path, why,
                             prev ? fmt::format("the previous checkpoint '{}' can be used instead (remove or move "
                                                "the bad file to resume from it)",
                                                *prev)
                                  : std::string("no earlier checkpoint exists in this folder")));
  };
  if (!std::regex_match(name, m, name_pattern())) throw refuse("its name carries no checksum (ckpt-<step>-<crc32>.pt)");
  const uint32_t expected_crc = static_cast<uint32_t>(std::stoul(m[2].str(), nullptr, 16));
  const uint32_t actual_crc = detail::file_crc32(path);
  if (expected_crc != actual_crc) {
    throw refuse(fmt::format("checksum {:08x} does not match the {:08x} recorded at save time (truncated or corrupted)",
                             actual_crc, expected_crc));
  }

  if (auto damage = find_archive_damage(path)) throw refuse(*damage);

  torch::serialize::InputArchive archive;
  TrainingState state;
  try {
    archive.load_from(path);
    torch::Tensor meta, fp, rng;
    archive.read("meta", meta);
    archive.read("fingerprint", fp);
    archive.read("rng_cpu", rng);
    if (meta.numel() != 5 && meta.numel() != 7) throw refuse("its metadata has the wrong size");
    state.global_step = meta[0].item<int64_t>();
    state.stage_index = meta[1].item<int64_t>();
    state.stage_step = meta[2].item<int64_t>();
    state.epoch = meta[3].item<int64_t>();
    state.batch_in_epoch = meta[4].item<int64_t>();
    if (meta.numel() == 7) {  // older checkpoints have no non-finite counters and no lr scale
      state.nonfinite_steps = meta[5].item<int64_t>();
      state.rollbacks = meta[6].item<int64_t>();
    }
    torch::Tensor lr_scale;
    if (archive.try_read("lr_scale", lr_scale)) state.lr_scale = lr_scale.item<double>();
    state.config_fingerprint = tensor_string(fp);
    torch::Tensor stage_fps;
    if (archive.try_read("stage_fingerprints", stage_fps)) {  // older checkpoints have none
      std::istringstream lines(tensor_string(stage_fps));
      for (std::string line; std::getline(lines, line);) state.stage_fingerprints.push_back(line);
    }
    if (!expected_fingerprint.empty() && state.config_fingerprint != expected_fingerprint) {
      throw Error(ErrorCategory::kConfig,
                  fmt::format("checkpoint '{}' was written under a different configuration (fingerprint {} vs {}); "
                              "resume with the original config or start a new output folder",
                              path, state.config_fingerprint, expected_fingerprint));
    }
    if (!contents) return state;
    auto sub = [&](const char* key, auto load_from) {
      torch::serialize::InputArchive a;
      archive.read(key, a);
      load_from(a);
    };
    // Each module's tensors are all checked before it takes any, so a damaged tensor never reaches it
    // (a module refused after an earlier one loaded still leaves that earlier one loaded).
    auto load_module = [&](torch::nn::Module& module, const char* key) {
      sub(key, [&](auto& a) {
        if (auto why = find_unloadable_entry(module, a, std::string(key) + ".")) throw refuse(*why);
        module.load(a);
      });
    };
    if (contents->student) load_module(*contents->student, "student");
    if (contents->loss) load_module(*contents->loss, "loss");
    if (contents->optimizer) sub("optimizer", [&](auto& a) { contents->optimizer->load(a); });
    if (contents->ema) sub("ema", [&](auto& a) { contents->ema->load(a); });
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(rng);
    }
    const auto cuda = cuda_generators();
    for (size_t d = 0; d < cuda.size(); ++d) {
      torch::Tensor state_d;
      if (!archive.try_read(fmt::format("rng_cuda{}", d), state_d)) continue;  // saved without CUDA
      auto gen = cuda[d];
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(state_d);
    }
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& e) {
    std::string what = e.what_without_backtrace();
    throw refuse(fmt::format("it does not match the model being restored ({})", what.substr(0, what.find('\n'))));
  } catch (const std::exception& e) {
    // LibTorch's unpickler throws other types too (torch::jit::ErrorReport for a damaged type name; found
    // by fuzz_checkpoint): any of them means the archive cannot be read.
    std::string what = e.what();
    throw refuse(fmt::format("its archive cannot be read ({})", what.substr(0, what.find('\n'))));
  }
  return state;
}

}  // namespace kd
