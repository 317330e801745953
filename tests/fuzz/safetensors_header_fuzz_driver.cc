// Deterministic stand-in for libFuzzer, and seed-corpus writer, for safetensors_header_fuzz.cc.
//
//   safetensors_header_fuzz_driver [--seed=N] [--iterations=N] [--max_seconds=S]
//   safetensors_header_fuzz_driver --write_seeds=DIR      (seed corpus for the libFuzzer build)
//   safetensors_header_fuzz_driver FILE...                (replay inputs, e.g. a crash file)
//
// Mutation loop: start from valid files, apply 1-4 random edits (bit flips, interesting bytes and
// JSON tokens, deletions, duplications, truncation) to the header text, the data section or the raw
// bytes, mostly re-writing a consistent length prefix so that edits reach the JSON checks. Inputs
// the parser accepts join the pool, so later edits build on them. Fixed seed: a failure reproduces.
#include <sys/stat.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

struct Input {
  std::string header;  // JSON text
  std::string data;    // data section
};

std::string Assemble(const Input& input) {
  std::string out(8, '\0');
  uint64_t n = input.header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + input.header + input.data;
}

std::string Entry(absl::string_view dtype, absl::string_view shape, uint64_t begin, uint64_t end) {
  return absl::StrCat("{\"dtype\":\"", dtype, "\",\"shape\":", shape, ",\"data_offsets\":[", begin,
                      ",", end, "]}");
}

std::vector<Input> Seeds() {
  std::vector<Input> seeds;
  seeds.push_back(
      {absl::StrCat("{\"__metadata__\":{\"format\":\"pt\"},\"a.weight\":",
                    Entry("F32", "[2,3]", 0, 24), ",\"a.bias\":", Entry("F32", "[2]", 24, 32), "}"),
       std::string(32, '\x01')});
  seeds.push_back(
      {absl::StrCat(
           "{\"f64\":", Entry("F64", "[1]", 0, 8), ",\"f16\":", Entry("F16", "[2,2]", 8, 16),
           ",\"bf16\":", Entry("BF16", "[3]", 16, 22), ",\"i64\":", Entry("I64", "[1]", 22, 30),
           ",\"i32\":", Entry("I32", "[1]", 30, 34), ",\"i16\":", Entry("I16", "[1]", 34, 36),
           ",\"i8\":", Entry("I8", "[2]", 36, 38), ",\"u8\":", Entry("U8", "[1]", 38, 39),
           ",\"bool\":", Entry("BOOL", "[1]", 39, 40), ",\"f8\":", Entry("F8_E4M3", "[4]", 40, 44),
           "}"),
       std::string(44, '\x7f')});
  seeds.push_back({absl::StrCat("{\"scalar\":", Entry("F32", "[]", 0, 4),
                                ",\"empty\":", Entry("BF16", "[0,5]", 4, 4),
                                ",\"z\":", Entry("I8", "[0]", 4, 4), "}      "),
                   std::string(4, '\0')});
  seeds.push_back({"{}", ""});
  seeds.push_back({"{\"__metadata__\":{\"a\":\"b\",\"c\":\"\"}}", "trailing"});
  return seeds;
}

constexpr const char* kTokens[] = {
    "-1",
    "0",
    "18446744073709551615",
    "9223372036854775807",
    "1e999",
    "1.5",
    "null",
    "true",
    "\"\"",
    "\"F8_E4M3\"",
    "\"F32\"",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "\"__metadata__\"",
    "\\u0000",
    "\"",
    "[]",
    "{}",
    "4294967296",
    "\xff\xfe",
    "\"data_offsets\"",
    "\"shape\"",
    "\"dtype\"",
};

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : rng_(seed) {}

  size_t Below(size_t n) {
    return n == 0 ? 0 : std::uniform_int_distribution<size_t>(0, n - 1)(rng_);
  }

  void MutateText(std::string* s) {
    const size_t pos = Below(s->size() + 1);
    switch (Below(7)) {
      case 0:  // bit flip
        if (!s->empty()) (*s)[Below(s->size())] ^= static_cast<char>(1u << Below(8));
        break;
      case 1:  // interesting byte
        if (!s->empty()) (*s)[Below(s->size())] = "\0\xff\"{}[],:-0123456789\\ "[Below(22)];
        break;
      case 2:  // token insertion
        s->insert(pos, kTokens[Below(std::size(kTokens))]);
        break;
      case 3:  // token replacing a range
        s->replace(pos, Below(8), kTokens[Below(std::size(kTokens))]);
        break;
      case 4:  // deletion
        s->erase(pos, Below(16) + 1);
        break;
      case 5:  // duplication of a range
        if (!s->empty()) {
          const size_t from = Below(s->size());
          s->insert(pos, s->substr(from, Below(32) + 1));
        }
        break;
      case 6:  // truncation
        s->resize(Below(s->size() + 1));
        break;
    }
  }

  std::string Mutate(Input input) {
    const size_t edits = 1 + Below(4);
    for (size_t i = 0; i < edits; ++i) MutateText(Below(10) == 0 ? &input.data : &input.header);
    std::string file = Assemble(input);
    // Now and then break the raw bytes too, length prefix included.
    if (Below(8) == 0) MutateText(&file);
    return file;
  }

 private:
  std::mt19937_64 rng_;
};

int Run(const std::string& bytes) {
  return LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

int WriteSeeds(const std::string& dir) {
  ::mkdir(dir.c_str(), 0755);
  int n = 0;
  for (const Input& seed : Seeds()) {
    std::ofstream out(absl::StrCat(dir, "/seed_", n++, ".safetensors"), std::ios::binary);
    const std::string bytes = Assemble(seed);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) {
      std::fprintf(stderr, "cannot write seeds to %s\n", dir.c_str());
      return 1;
    }
  }
  std::printf("wrote %d seeds to %s\n", n, dir.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = 1;
  uint64_t iterations = 100000;
  double max_seconds = 20;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg(argv[i]);
    bool ok = true;
    if (absl::ConsumePrefix(&arg, "--seed=")) {
      ok = absl::SimpleAtoi(arg, &seed);
    } else if (absl::ConsumePrefix(&arg, "--iterations=")) {
      ok = absl::SimpleAtoi(arg, &iterations);
    } else if (absl::ConsumePrefix(&arg, "--max_seconds=")) {
      ok = absl::SimpleAtod(arg, &max_seconds);
    } else if (absl::ConsumePrefix(&arg, "--write_seeds=")) {
      return WriteSeeds(std::string(arg));
    } else if (absl::StartsWith(arg, "--")) {
      ok = false;
    } else {
      files.emplace_back(arg);
    }
    if (!ok) {
      std::fprintf(stderr, "bad argument %s\n", argv[i]);
      return 2;
    }
  }
  if (!files.empty()) {
    for (const std::string& path : files) {
      std::ifstream in(path, std::ios::binary);
      std::stringstream bytes;
      bytes << in.rdbuf();
      Run(bytes.str());
    }
    std::printf("replayed %zu inputs\n", files.size());
    return 0;
  }

  std::vector<Input> pool = Seeds();
  const size_t seeds = pool.size();
  for (const Input& input : pool) Run(Assemble(input));
  Mutator mutator(seed);
  const auto start = std::chrono::steady_clock::now();
  uint64_t done = 0;
  uint64_t accepted = 0;
  for (; done < iterations; ++done) {
    if (done % 256 == 0 &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >
            max_seconds) {
      break;
    }
    const Input& base = pool[mutator.Below(pool.size())];
    const std::string file = mutator.Mutate(base);
    Run(file);
    // Accepted inputs whose header text changed become bases for further edits (bounded pool);
    // edits to the data section alone add nothing new.
    auto header = dgrid::ParseSafetensorsHeader(file, file.size(), "pool");
    if (!header.ok()) continue;
    ++accepted;
    if (file.compare(8, header->data_offset - 8, base.header) != 0) {
      Input kept{file.substr(8, header->data_offset - 8), file.substr(header->data_offset)};
      if (pool.size() < 4096) {
        pool.push_back(std::move(kept));
      } else {
        pool[seeds + mutator.Below(pool.size() - seeds)] = std::move(kept);
      }
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "safetensors_header_fuzz_driver: seed %llu, %llu inputs in %.1f s, %llu accepted, "
      "no contract violation\n",
      static_cast<unsigned long long>(seed), static_cast<unsigned long long>(done), seconds,
      static_cast<unsigned long long>(accepted));
  return 0;
}
