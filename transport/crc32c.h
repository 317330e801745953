// CRC-32C (Castagnoli, the checksum of iSCSI/ext4/gRPC's TensorRef.crc32c): plain and fused with a
// copy, so that checking a transfer costs no extra pass over memory where the bytes are copied
// anyway.
//
// On x86-64 with SSE4.2 the CRC32 instruction runs three independent streams that are combined
// with precomputed "append N zero bytes" operators (the instruction's latency is three times its
// throughput); elsewhere a byte-at-a-time table. Both give the same value (standard CRC-32C:
// reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF; "123456789" ->
// 0xE3069283).
//
// Thread safety: pure functions; the tables are built once, thread-safely, on first use.
#ifndef DGRID_TRANSPORT_CRC32C_H_
#define DGRID_TRANSPORT_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace dgrid {

// CRC-32C of `size` bytes at `data`, continuing from `crc` (the value for the bytes before; 0 for
// none): Crc32c(Crc32c(0, a, n), b, m) == CRC-32C of a followed by b.
uint32_t Crc32c(uint32_t crc, const void* data, size_t size);

// Copies `size` bytes from `src` to `dst` (not overlapping) and returns their CRC-32C, continuing
// from `crc` as above.
uint32_t CopyWithCrc32c(uint32_t crc, void* dst, const void* src, size_t size);

}  // namespace dgrid

#endif  // DGRID_TRANSPORT_CRC32C_H_
