#include "kd/core/archive_file.h"

#include <sstream>

#include <torch/torch.h>

#include "kd/core/atomic_file.h"

namespace kd {

void save_archive_atomically(torch::serialize::OutputArchive& archive, const std::string& path) {
  std::ostringstream bytes;
  archive.save_to(bytes);
  write_bytes_atomically(path, bytes.str());
}

}  // namespace kd
