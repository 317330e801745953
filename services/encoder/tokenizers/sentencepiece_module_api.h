// The table of functions that libdgrid_spm.so (services/encoder/spm_module) exports.
//
// Why a separately loaded module: Debian's libsentencepiece.so bundles its own protobuf-lite and
// exports those symbols. Linked into a process that also uses libprotobuf (every dgrid process:
// gRPC), whichever library comes first in the symbol search order wins, and libprotobuf's start-up
// then runs sentencepiece's copy and crashes. dlopen()ing the wrapper with RTLD_LOCAL |
// RTLD_DEEPBIND keeps sentencepiece's symbols out of the global scope and binds its own references
// to itself.
//
// Both sides are built by the same compiler against the same libstdc++, so C++ types may cross.
#ifndef DGRID_SERVICES_ENCODER_TOKENIZERS_SENTENCEPIECE_MODULE_API_H_
#define DGRID_SERVICES_ENCODER_TOKENIZERS_SENTENCEPIECE_MODULE_API_H_

#include <string>
#include <string_view>
#include <vector>

namespace dgrid::encoder {

inline constexpr int kSentencePieceModuleVersion = 1;
inline constexpr char kSentencePieceModuleEntry[] = "dgrid_sentencepiece_module";

struct SentencePieceModuleApi {
  int version;
  void* (*create)();
  void (*destroy)(void* model);
  bool (*load)(void* model, const std::string& serialized, std::string* error);
  bool (*encode)(const void* model, std::string_view text, std::vector<int>* ids,
                 std::string* error);
  bool (*encode_pieces)(const void* model, std::string_view text, std::vector<std::string>* pieces,
                        std::string* error);
  std::string (*decode)(const void* model, const std::vector<int>& ids);
  float (*score)(const void* model, int id);
  int (*piece_to_id)(const void* model, const std::string& piece);
  std::string (*id_to_piece)(const void* model, int id);
  bool (*is_control)(const void* model, int id);
  int (*size)(const void* model);
  int (*unk_id)(const void* model);
};

}  // namespace dgrid::encoder

#endif  // DGRID_SERVICES_ENCODER_TOKENIZERS_SENTENCEPIECE_MODULE_API_H_
