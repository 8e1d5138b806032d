/* f2_rng.h — the counter-based RNG shared by the CPU reference and the CUDA kernels: element i of
 * a tensor gets a value that is a pure function of (seed, i), so CPU and GPU agree for one seed
 * and any launch shape. Compiled by both gcc and nvcc (host and device). */
#ifndef F2_RNG_H
#define F2_RNG_H
#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define F2_HD __host__ __device__ __forceinline__
#else
#define F2_HD static inline
#endif

/* SplitMix64's finalizer over (seed, stream, counter): statistically solid, stateless. */
F2_HD uint64_t f2_rng_bits(uint64_t seed, uint64_t counter) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + counter * 0xD1B54A32D192ED03ull + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Uniform in [0, 1) with 53 random bits. */
F2_HD double f2_rng_uniform(uint64_t seed, uint64_t i) {
  return (double)(f2_rng_bits(seed, 2 * i) >> 11) * 0x1.0p-53;
}

/* Standard normal by Box-Muller from two counters of element i (u1 in (0, 1], never log 0). */
F2_HD double f2_rng_normal(uint64_t seed, uint64_t i) {
  double u1 = (double)((f2_rng_bits(seed, 2 * i) >> 11) + 1) * 0x1.0p-53;
  double u2 = (double)(f2_rng_bits(seed, 2 * i + 1) >> 11) * 0x1.0p-53;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
#endif
