// Deterministic stand-in for libFuzzer, shared by the fuzz targets that keep their seed corpus in
// tests/fuzz/corpus/<target>/ (each target links this file with its LLVMFuzzerTestOneInput).
//
//   <target>_fuzz_driver --corpus=DIR [--dict=FILE] [--seed=N] [--iterations=N] [--max_seconds=S]
//   <target>_fuzz_driver FILE...        (replay inputs, e.g. a crash file from libFuzzer)
//
// Runs every file of the corpus, then `iterations` mutated inputs: each starts from a corpus file
// or an earlier mutant (a bounded pool, so that edits build on each other), with 1-6 edits (bit
// flips, interesting bytes, dictionary tokens, deletions, duplications, splices with another input,
// truncation). The dictionary is libFuzzer's format (`name="token"` lines, \xNN and \\ \" escapes),
// so both engines share it. A target whose inputs have structure (a length prefix, say) defines
// libFuzzer's LLVMFuzzerCustomMutator; the driver then makes every mutant with it, and gives it
// LLVMFuzzerMutate for plain byte edits, as libFuzzer does. The run is bounded by the number of
// inputs (and, if given, by --max_seconds, a cap for slow machines), and a fixed seed reproduces a
// failure.
#include <dirent.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" __attribute__((weak)) size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size,
                                                                size_t max_size, unsigned int seed);

namespace {

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream bytes;
  bytes << in.rdbuf();
  *out = bytes.str();
  return true;
}

// The files of `dir`, sorted by name so that the run does not depend on the directory's order.
bool ReadCorpus(const std::string& dir, std::vector<std::string>* inputs) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return false;
  std::vector<std::string> names;
  while (const dirent* entry = readdir(d)) {
    if (entry->d_name[0] != '.') names.emplace_back(entry->d_name);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    std::string bytes;
    if (!ReadFile(dir + "/" + name, &bytes)) return false;
    inputs->push_back(std::move(bytes));
  }
  return true;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Tokens of a libFuzzer dictionary: the quoted text of each non-comment line.
bool ReadDictionary(const std::string& path, std::vector<std::string>* tokens) {
  std::string text;
  if (!ReadFile(path, &text)) return false;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    const size_t open = line.find('"');
    const size_t close = line.rfind('"');
    if (line.empty() || line[0] == '#' || open == std::string::npos || close <= open) continue;
    std::string token;
    for (size_t i = open + 1; i < close; ++i) {
      if (line[i] != '\\' || i + 1 >= close) {
        token.push_back(line[i]);
      } else if (line[i + 1] == 'x' && i + 3 < close && HexDigit(line[i + 2]) >= 0 &&
                 HexDigit(line[i + 3]) >= 0) {
        token.push_back(static_cast<char>(HexDigit(line[i + 2]) * 16 + HexDigit(line[i + 3])));
        i += 3;
      } else {
        token.push_back(line[++i]);
      }
    }
    tokens->push_back(std::move(token));
  }
  return true;
}

class Mutator {
 public:
  Mutator(uint64_t seed, std::vector<std::string> tokens)
      : rng_(seed), tokens_(std::move(tokens)) {}

  size_t Below(size_t n) {
    return n == 0 ? 0 : std::uniform_int_distribution<size_t>(0, n - 1)(rng_);
  }

  void Mutate(std::string* s, const std::string& other) {
    const size_t edits = 1 + Below(6);
    for (size_t i = 0; i < edits; ++i) Edit(s, other);
  }

 private:
  void Edit(std::string* s, const std::string& other) {
    const size_t pos = Below(s->size() + 1);
    switch (Below(tokens_.empty() ? 8 : 10)) {
      case 0:  // bit flip
        if (!s->empty()) (*s)[Below(s->size())] ^= static_cast<char>(1u << Below(8));
        break;
      case 1:  // interesting byte
        if (!s->empty()) (*s)[Below(s->size())] = "\0\xff\x7f\x80\"{}[],:-0\\ \n\r"[Below(16)];
        break;
      case 2:  // random byte inserted
        s->insert(pos, 1, static_cast<char>(Below(256)));
        break;
      case 3:  // deletion
        s->erase(pos, Below(16) + 1);
        break;
      case 4:  // duplication of a range
        if (!s->empty()) {
          const size_t from = Below(s->size());
          s->insert(pos, s->substr(from, Below(64) + 1));
        }
        break;
      case 5:  // splice: a range of another input
        if (!other.empty()) {
          const size_t from = Below(other.size());
          s->replace(pos, Below(32), other.substr(from, Below(128) + 1));
        }
        break;
      case 6:  // truncation
        s->resize(Below(s->size() + 1));
        break;
      case 7:  // a digit run made large or negative
        s->insert(pos, Below(2) == 0 ? "-1" : "99999999999999999999");
        break;
      default:  // dictionary token, inserted or replacing a range
        if (Below(2) == 0) {
          s->insert(pos, tokens_[Below(tokens_.size())]);
        } else {
          s->replace(pos, Below(8), tokens_[Below(tokens_.size())]);
        }
        break;
    }
  }

  std::mt19937_64 rng_;
  std::vector<std::string> tokens_;
};

// The mutator LLVMFuzzerMutate uses while the driver runs (a target's custom mutator calls it).
Mutator* g_mutator = nullptr;

// One mutant of `base`: the target's custom mutator where it has one, else the driver's edits.
std::string MakeMutant(Mutator& mutator, const std::string& base, const std::string& other) {
  std::string input = base;
  if (LLVMFuzzerCustomMutator == nullptr) {
    mutator.Mutate(&input, other);
    return input;
  }
  const size_t max_size = std::max<size_t>(4096, 2 * input.size());
  input.resize(max_size);
  const size_t size =
      LLVMFuzzerCustomMutator(reinterpret_cast<uint8_t*>(input.data()), base.size(), max_size,
                              static_cast<unsigned int>(mutator.Below(1u << 31)));
  input.resize(std::min(size, max_size));
  return input;
}

int Run(const std::string& bytes) {
  return LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

bool ParseUint(const std::string& text, uint64_t* out) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) return false;
  *out = std::stoull(text);
  return true;
}

}  // namespace

// libFuzzer's generic mutation, for custom mutators: the driver's edits, within max_size.
extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size) {
  if (g_mutator == nullptr) return size;
  std::string input(reinterpret_cast<const char*>(data), size);
  g_mutator->Mutate(&input, input);
  const size_t out = std::min(input.size(), max_size);
  std::copy_n(input.data(), out, data);
  return out;
}

int main(int argc, char** argv) {
  uint64_t seed = 1;
  uint64_t iterations = 10000;
  double max_seconds = 0;  // 0: no time cap
  std::string corpus, dict;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    const std::string arg(argv[i]);
    const auto value = [&arg](const char* prefix) {
      return arg.rfind(prefix, 0) == 0 ? arg.substr(std::char_traits<char>::length(prefix))
                                       : std::string();
    };
    bool ok = true;
    if (arg.rfind("--seed=", 0) == 0) {
      ok = ParseUint(value("--seed="), &seed);
    } else if (arg.rfind("--iterations=", 0) == 0) {
      ok = ParseUint(value("--iterations="), &iterations);
    } else if (arg.rfind("--max_seconds=", 0) == 0) {
      const std::string text = value("--max_seconds=");
      char* end = nullptr;
      max_seconds = std::strtod(text.c_str(), &end);
      ok = !text.empty() && *end == '\0' && max_seconds >= 0;
    } else if (arg.rfind("--corpus=", 0) == 0) {
      corpus = value("--corpus=");
    } else if (arg.rfind("--dict=", 0) == 0) {
      dict = value("--dict=");
    } else if (arg.rfind("--", 0) == 0) {
      ok = false;
    } else {
      files.push_back(arg);
    }
    if (!ok) {
      std::fprintf(stderr, "bad argument %s\n", argv[i]);
      return 2;
    }
  }
  if (!files.empty()) {
    for (const std::string& path : files) {
      std::string bytes;
      if (!ReadFile(path, &bytes)) {
        std::fprintf(stderr, "cannot read %s\n", path.c_str());
        return 2;
      }
      Run(bytes);
    }
    std::printf("replayed %zu inputs\n", files.size());
    return 0;
  }
  std::vector<std::string> pool;
  if (corpus.empty() || !ReadCorpus(corpus, &pool) || pool.empty()) {
    std::fprintf(stderr, "--corpus=DIR must name a folder of seed inputs\n");
    return 2;
  }
  std::vector<std::string> tokens;
  if (!dict.empty() && !ReadDictionary(dict, &tokens)) {
    std::fprintf(stderr, "cannot read dictionary %s\n", dict.c_str());
    return 2;
  }
  for (const std::string& input : pool) Run(input);
  const size_t seeds = pool.size();
  Mutator mutator(seed, std::move(tokens));
  g_mutator = &mutator;
  const auto start = std::chrono::steady_clock::now();
  const auto elapsed = [&start] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  uint64_t done = 0;
  for (; done < iterations; ++done) {
    if (max_seconds > 0 && done % 256 == 0 && elapsed() > max_seconds) break;
    const std::string& base = pool[mutator.Below(pool.size())];
    std::string input = MakeMutant(mutator, base, pool[mutator.Below(pool.size())]);
    Run(input);
    // Every 8th mutant joins the pool (replacing an older mutant once it is full); the seeds stay.
    if (mutator.Below(8) != 0) continue;
    if (pool.size() < 1024) {
      pool.push_back(std::move(input));
    } else {
      pool[seeds + mutator.Below(pool.size() - seeds)] = std::move(input);
    }
  }
  const double seconds = elapsed();
  std::printf("%s: seed %llu, %zu seeds + %llu mutated inputs in %.1f s, no failure\n", argv[0],
              static_cast<unsigned long long>(seed), seeds, static_cast<unsigned long long>(done),
              seconds);
  return 0;
}
