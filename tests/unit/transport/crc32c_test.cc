// CRC-32C against the standard check value and a bit-at-a-time reference written from the
// definition, over sizes and alignments that reach every branch of the three-stream loop.
#include "transport/crc32c.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

namespace dgrid {
namespace {

uint32_t ReferenceCrc32c(const unsigned char* p, size_t size) {
  uint32_t r = 0xFFFFFFFF;
  for (size_t i = 0; i < size; ++i) {
    r ^= p[i];
    for (int bit = 0; bit < 8; ++bit) r = (r >> 1) ^ (0x82F63B78 & (0u - (r & 1)));
  }
  return ~r;
}

TEST(Crc32c, CheckValue) {
  const char* digits = "123456789";
  EXPECT_EQ(Crc32c(0, digits, 9), 0xE3069283u);
  EXPECT_EQ(Crc32c(0, digits, 0), 0u);
}

TEST(Crc32c, MatchesReferenceAcrossSizesAndAlignments) {
  std::mt19937 rng(7);
  std::vector<unsigned char> data(3 * 8192 * 2 + 3 * 256 * 3 + 64);
  for (auto& b : data) b = static_cast<unsigned char>(rng());
  // Lengths around the 3 x 8192 and 3 x 256 block boundaries, and small ones.
  const size_t sizes[] = {0,     1,     7,     8,     9,     767,   768,   769,
                          24575, 24576, 24577, 25343, 49152, 49999, 51000, 51247};
  for (size_t offset = 0; offset < 8; ++offset) {
    for (size_t size : sizes) {
      if (offset + size > data.size()) continue;
      const unsigned char* p = data.data() + offset;
      const uint32_t expected = ReferenceCrc32c(p, size);
      EXPECT_EQ(Crc32c(0, p, size), expected) << "offset " << offset << " size " << size;
      std::vector<unsigned char> copy(size + 1, 0xAB);
      EXPECT_EQ(CopyWithCrc32c(0, copy.data(), p, size), expected)
          << "offset " << offset << " size " << size;
      EXPECT_EQ(std::memcmp(copy.data(), p, size), 0);
      EXPECT_EQ(copy[size], 0xAB);  // nothing written past the end
    }
  }
}

TEST(Crc32c, ContinuesAcrossPieces) {
  std::mt19937 rng(11);
  std::vector<unsigned char> data(100000);
  for (auto& b : data) b = static_cast<unsigned char>(rng());
  const uint32_t whole = Crc32c(0, data.data(), data.size());
  for (size_t split : {size_t{1}, size_t{4096}, size_t{30001}, size_t{99999}}) {
    const uint32_t first = Crc32c(0, data.data(), split);
    EXPECT_EQ(Crc32c(first, data.data() + split, data.size() - split), whole) << split;
  }
}

}  // namespace
}  // namespace dgrid
