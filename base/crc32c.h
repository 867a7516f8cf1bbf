/* crc32c.h - CRC-32C (Castagnoli, the iSCSI checksum of RFC 3720), and the
 * masked form TFRecord files (TensorBoard's event files) store.
 *
 * Debian 12 packages no C library for it (only python3-crc32c), so this is a
 * small table-driven implementation, checked against RFC 3720's test vectors
 * (tests/unit/test_tbevents.c).
 */
#ifndef TIDAL_BASE_CRC32C_H
#define TIDAL_BASE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* The CRC-32C of n bytes at p (reflected polynomial 0x82F63B78, initial value
 * and final XOR 0xFFFFFFFF): "123456789" gives 0xE3069283. Thread-safe. */
uint32_t tidal_crc32c(const void *p, size_t n);

/* TFRecord's mask of a CRC: rotated right by 15 bits plus 0xA282EAD8 (modulo
 * 2^32), so a CRC stored next to the bytes it covers is not itself a CRC of them. */
uint32_t tidal_crc32c_mask(uint32_t crc);

#endif
