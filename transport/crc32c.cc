#include "transport/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace dgrid {
namespace {

constexpr uint32_t kPoly = 0x82F63B78;  // Castagnoli, bit-reflected

// A linear map on 32-bit CRC registers over GF(2): column n is the image of bit n.
using Matrix = std::array<uint32_t, 32>;

uint32_t Apply(const Matrix& m, uint32_t v) {
  uint32_t out = 0;
  for (int n = 0; v != 0; ++n, v >>= 1) {
    if (v & 1) out ^= m[n];
  }
  return out;
}

// a after b.
Matrix Compose(const Matrix& a, const Matrix& b) {
  Matrix out;
  for (int n = 0; n < 32; ++n) out[n] = Apply(a, b[n]);
  return out;
}

// What feeding `bytes` zero bytes does to a (non-inverted) register: the register moves right one
// bit per zero bit, folding in the polynomial when a one drops out. Power by squaring.
Matrix ZerosOperator(size_t bytes) {
  Matrix bit;
  bit[0] = kPoly;
  for (int n = 1; n < 32; ++n) bit[n] = uint32_t{1} << (n - 1);
  Matrix result;
  for (int n = 0; n < 32; ++n) result[n] = uint32_t{1} << n;
  for (size_t e = bytes * 8; e != 0; e >>= 1) {
    if (e & 1) result = Compose(bit, result);
    bit = Compose(bit, bit);
  }
  return result;
}

// The zeros operator for one length, as four byte-indexed tables (one lookup per register byte).
struct Shift {
  explicit Shift(size_t bytes) {
    const Matrix op = ZerosOperator(bytes);
    for (uint32_t b = 0; b < 256; ++b) {
      for (int k = 0; k < 4; ++k) table[k][b] = Apply(op, b << (8 * k));
    }
  }
  uint32_t operator()(uint32_t crc) const {
    return table[0][crc & 0xFF] ^ table[1][(crc >> 8) & 0xFF] ^ table[2][(crc >> 16) & 0xFF] ^
           table[3][crc >> 24];
  }
  uint32_t table[4][256];
};

struct ByteTable {
  ByteTable() {
    for (uint32_t b = 0; b < 256; ++b) {
      uint32_t r = b;
      for (int i = 0; i < 8; ++i) r = (r >> 1) ^ ((r & 1) ? kPoly : 0);
      table[b] = r;
    }
  }
  uint32_t table[256];
};

uint32_t SoftwareCrc(uint32_t crc, const unsigned char* p, size_t size) {
  static const ByteTable* const bytes = new ByteTable();
  uint32_t r = ~crc;
  for (size_t i = 0; i < size; ++i) r = (r >> 8) ^ bytes->table[(r ^ p[i]) & 0xFF];
  return ~r;
}

#if defined(__x86_64__)
// Stream lengths of the three-way loop: long blocks for the bulk, short ones for the tail.
constexpr size_t kLong = 8192;
constexpr size_t kShort = 256;

// The CRC32 instruction over `size` bytes of `src`, three streams at a time; with kCopy each word
// is also stored to `dst` (one pass over memory for copy and check).
template <bool kCopy>
__attribute__((target("sse4.2"))) uint32_t HardwareCrc(uint32_t crc, unsigned char* dst,
                                                       const unsigned char* src, size_t size) {
  static const Shift* const long_shift = new Shift(kLong);
  static const Shift* const short_shift = new Shift(kShort);
  uint64_t c0 = static_cast<uint32_t>(~crc);
  while (size > 0 && (reinterpret_cast<uintptr_t>(src) & 7) != 0) {
    if constexpr (kCopy) *dst++ = *src;
    c0 = _mm_crc32_u8(static_cast<uint32_t>(c0), *src++);
    --size;
  }
  for (const size_t block : {kLong, kShort}) {
    const Shift& shift = block == kLong ? *long_shift : *short_shift;
    while (size >= 3 * block) {
      uint64_t c1 = 0;
      uint64_t c2 = 0;
      for (size_t i = 0; i < block; i += 8) {
        uint64_t a, b, c;
        std::memcpy(&a, src + i, 8);
        std::memcpy(&b, src + block + i, 8);
        std::memcpy(&c, src + 2 * block + i, 8);
        c0 = _mm_crc32_u64(c0, a);
        c1 = _mm_crc32_u64(c1, b);
        c2 = _mm_crc32_u64(c2, c);
        if constexpr (kCopy) {
          std::memcpy(dst + i, &a, 8);
          std::memcpy(dst + block + i, &b, 8);
          std::memcpy(dst + 2 * block + i, &c, 8);
        }
      }
      // Register after stream 0 then stream 1 = shift(c0 over block zeros) ^ c1, and so on.
      c0 = shift(static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c1);
      c0 = shift(static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c2);
      src += 3 * block;
      if constexpr (kCopy) dst += 3 * block;
      size -= 3 * block;
    }
  }
  for (; size >= 8; size -= 8, src += 8) {
    uint64_t a;
    std::memcpy(&a, src, 8);
    c0 = _mm_crc32_u64(c0, a);
    if constexpr (kCopy) {
      std::memcpy(dst, &a, 8);
      dst += 8;
    }
  }
  for (; size > 0; --size) {
    if constexpr (kCopy) *dst++ = *src;
    c0 = _mm_crc32_u8(static_cast<uint32_t>(c0), *src++);
  }
  return ~static_cast<uint32_t>(c0);
}

bool HasSse42() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
#endif

}  // namespace

uint32_t Crc32c(uint32_t crc, const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
#if defined(__x86_64__)
  if (HasSse42()) return HardwareCrc<false>(crc, nullptr, p, size);
#endif
  return SoftwareCrc(crc, p, size);
}

uint32_t CopyWithCrc32c(uint32_t crc, void* dst, const void* src, size_t size) {
#if defined(__x86_64__)
  if (HasSse42()) {
    return HardwareCrc<true>(crc, static_cast<unsigned char*>(dst),
                             static_cast<const unsigned char*>(src), size);
  }
#endif
  std::memcpy(dst, src, size);
  return Crc32c(crc, dst, size);
}

}  // namespace dgrid
