// iadgpt-spm-train: trains a SentencePiece model in its own process (`llm::train_tokenizer`).
//
// Why a process and not an entry point in the dlopen'ed shim: the trainer logs through std::cerr,
// and a program's copy-relocated std::cerr is not the instance a RTLD_DEEPBIND library binds to,
// so logging from inside the shim crashes (measured: SIGSEGV in ostream::sentry). A separate
// process also keeps sentencepiece's bundled protobuf away from libtorch's (see spm_shim.cpp).
// Built from Debian's libsentencepiece-dev (no extra package, same library version as the
// tokenizer); Debian's own `spm_train` takes the same flags.
//
// Usage: iadgpt-spm-train --input=FILE --model_prefix=PREFIX [--key=value ...]
#include <sentencepiece_trainer.h>

#include <iostream>
#include <string>
#include <unordered_map>

int main(int argc, char** argv) {
  std::unordered_map<std::string, std::string> kwargs;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    const auto eq = a.find('=');
    if (a.rfind("--", 0) != 0 || eq == std::string::npos) {
      std::cerr << "iadgpt-spm-train: expected --key=value, got '" << a << "'\n";
      return 2;
    }
    kwargs[a.substr(2, eq - 2)] = a.substr(eq + 1);
  }
  const auto status = sentencepiece::SentencePieceTrainer::Train(kwargs);
  if (!status.ok()) {
    std::cerr << "iadgpt-spm-train: " << status.ToString() << "\n";
    return 2;
  }
  return 0;
}
