/* ops_cpu.h — the CPU halves of the tensor ops (ops_cpu.c), called by the one dispatch point in
 * ops.c after it has checked arguments, shapes and devices: these see valid CPU tensors only.
 * Plus the shape formatting that view.c and ops.c share for their error messages. */
#ifndef F2_OPS_CPU_H
#define F2_OPS_CPU_H
#include "f2_internal.h"

#pragma GCC visibility push(hidden)
/* "[2,3]" into buf (view.c). */
void f2_shape_text(char *buf, size_t size, int32_t ndim, const int64_t *shape);

int f2_cpu_copy(f2_tensor *dst, const f2_tensor *src);
int f2_cpu_fill(f2_tensor *t, double value);
int f2_cpu_arange(f2_tensor *t, double start, double step);
int f2_cpu_rand_uniform(f2_tensor *t, uint64_t seed, double low, double high);
int f2_cpu_rand_normal(f2_tensor *t, uint64_t seed, double mean, double std);
/* b == NULL: out = a op s. */
int f2_cpu_binary(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, double s, int32_t op);
int f2_cpu_unary(f2_tensor *out, const f2_tensor *a, int32_t op);
int f2_cpu_reduce(f2_tensor *out, const f2_tensor *x, int32_t dim, int32_t op);
/* OpenBLAS when built with it (F2_HAVE_BLAS), else the reference; _ref is the plain C GEMM (tests). */
int f2_cpu_matmul(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t trans_a, int32_t trans_b,
                  float alpha, float beta);
int f2_cpu_matmul_ref(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t trans_a, int32_t trans_b,
                      float alpha, float beta);
#pragma GCC visibility pop
#endif
