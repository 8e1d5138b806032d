/* half.c — IEEE binary16 (f16) <-> fp32 conversions for the CPU reference, bit-exact:
 * round to nearest even, overflow to Inf, denormals both ways, NaN stays a quiet NaN with its sign.
 * (bf16 is a plain truncation of fp32 and lives inline in f2_internal.h.) */
#include "f2_internal.h"

#include <string.h>

static uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static float bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

float f2_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | mantissa << 13); /* Inf, NaN (payload kept) */
  if (exponent == 0) {                                                           /* zero, denormal: m * 2^-24 */
    float magnitude = (float)mantissa * 0x1p-24f;                                /* exact */
    return bits_float(sign | float_bits(magnitude));
  }
  return bits_float(sign | (exponent + 112u) << 23 | mantissa << 13); /* rebias 15 -> 127 */
}

uint16_t f2_f32_to_f16(float f) {
  uint32_t u = float_bits(f);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7e00u | (uint16_t)((u >> 13) & 0x1ffu); /* quiet NaN, top payload bits */
  if (u >= 0x38800000u) {                                                        /* >= 2^-14: a normal f16 */
    /* Round the 13 dropped mantissa bits to nearest even; a carry moves into the exponent, which is
     * exactly right (1.111..1 rounds up to the next power of two, 65520 and above to Inf). */
    uint32_t rounded = u + 0xfffu + ((u >> 13) & 1u);
    uint32_t h = (rounded - 0x38000000u) >> 13; /* rebias 127 -> 15 */
    return sign | (uint16_t)(h >= 0x7c00u ? 0x7c00u : h);
  }
  if (u <= 0x33000000u) return sign; /* <= 2^-25: half the smallest denormal or less, ties to even 0 */
  /* Denormal: the value in units of 2^-24 is m * 2^(e - 150 + 24) with the implicit bit set. */
  uint32_t exponent = u >> 23, mantissa = (u & 0x7fffffu) | 0x800000u;
  uint32_t shift = 126u - exponent; /* 14..24 */
  uint32_t h = mantissa >> shift, rest = mantissa & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rest > half || (rest == half && (h & 1u))) h++; /* may round up into the smallest normal: right */
  return sign | (uint16_t)h;
}
