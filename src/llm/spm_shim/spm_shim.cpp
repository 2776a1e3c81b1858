// A tiny shared object between iadgpt and libsentencepiece, loaded with dlopen(RTLD_DEEPBIND).
//
// Why: Debian's libsentencepiece carries its own protobuf-lite 3.14 and exports those symbols,
// while libtorch pulls in libprotobuf 3.21 (through onnx). Linked normally, whichever library comes
// first in the global symbol scope serves both, and the program crashes at start-up in protobuf's
// static initialisers. Loaded locally and deep-bound, sentencepiece keeps its own protobuf and
// libtorch keeps the system one. The interface is C linkage over C++ standard types (one compiler,
// one libstdc++).
#include <sentencepiece_processor.h>

#include <string>
#include <string_view>
#include <vector>

using sentencepiece::SentencePieceProcessor;

extern "C" {

void* iadgpt_spm_load(const std::string* path, std::string* error) {
  auto* sp = new SentencePieceProcessor();
  if (auto status = sp->Load(*path); !status.ok()) {
    *error = status.ToString();
    delete sp;
    return nullptr;
  }
  return sp;
}

void iadgpt_spm_free(void* sp) { delete static_cast<SentencePieceProcessor*>(sp); }

bool iadgpt_spm_encode(const void* sp, std::string_view text, std::vector<int>* ids, std::string* error) {
  auto status = static_cast<const SentencePieceProcessor*>(sp)->Encode(text, ids);
  if (!status.ok()) *error = status.ToString();
  return status.ok();
}

bool iadgpt_spm_decode(const void* sp, const std::vector<int>* ids, std::string* text, std::string* error) {
  auto status = static_cast<const SentencePieceProcessor*>(sp)->Decode(*ids, text);
  if (!status.ok()) *error = status.ToString();
  return status.ok();
}

void iadgpt_spm_piece(const void* sp, int id, std::string* piece) {
  *piece = static_cast<const SentencePieceProcessor*>(sp)->IdToPiece(id);
}

// which: 0 = piece count, 1 = bos, 2 = eos, 3 = unk.
int iadgpt_spm_info(const void* sp, int which) {
  const auto* p = static_cast<const SentencePieceProcessor*>(sp);
  switch (which) {
    case 0: return p->GetPieceSize();
    case 1: return p->bos_id();
    case 2: return p->eos_id();
    case 3: return p->unk_id();
  }
  return -1;
}

}  // extern "C"
