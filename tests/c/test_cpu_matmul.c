/* test_cpu_matmul.c — the CPU GEMM fast path (f2_matmul: OpenBLAS when built with it) against the plain C
 * reference f2_cpu_matmul_ref on fresh random inputs: every transpose, 2-D and batched, f32/bf16/f16
 * inputs, f32/bf16 out, operands and out contiguous, transposed (column-major), narrowed (row stride >
 * columns) or broadcast over the batch; beta = 0 never reads out. Then the thread-count contract: the
 * same GEMM (training shapes) and the same elementwise op give identical bits on 1 and 2 threads. */
#include <string.h>

#include "f2test.h"
#include "ops_cpu.h"

void omp_set_num_threads(int n);   /* libgomp is linked in; the test drives the thread count itself */
int omp_get_max_threads(void);

static uint64_t rng_state;
static double uniform(void) {   /* SplitMix64 */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}
static int64_t rand_int(int64_t lo, int64_t hi) { return lo + (int64_t)(uniform() * (double)(hi - lo + 1)); }

enum { CONTIGUOUS, TRANSPOSED, NARROWED, EXPANDED, LAYOUTS };

/* A rows x cols matrix (batch of them when batch > 0) of dtype in the given layout, N(0,1) filled. The
 * returned view is what the GEMM sees; its storage is freed with it. */
static f2_tensor *operand(int32_t dtype, int64_t batch, int64_t rows, int64_t cols, int layout) {
  int nd = batch > 0 ? 3 : 2, o = nd - 2;
  int64_t shape[3] = {batch, rows, cols}, *s = batch > 0 ? shape : shape + 1, full[3];
  memcpy(full, s, sizeof(int64_t) * nd);
  if (layout == TRANSPOSED) full[o] = cols, full[o + 1] = rows;
  if (layout == NARROWED) full[o + 1] += rand_int(1, 5);
  if (layout == EXPANDED && nd == 3) full[0] = 1;
  f2_tensor *base = f2_tensor_new(dtype, F2_CPU, nd, full), *v = NULL;
  if (!base) return NULL;
  f2_rand_normal(base, (uint64_t)rand_int(0, 1 << 30), 0, 1);
  if (layout == TRANSPOSED) v = f2_tensor_transpose(base, o, o + 1);
  else if (layout == NARROWED) v = f2_tensor_narrow(base, o + 1, 0, cols);
  else if (layout == EXPANDED && nd == 3) v = f2_tensor_expand(base, nd, s);
  else v = f2_tensor_view(base);
  f2_tensor_free(base);
  return v;
}

/* max |x - y| / max |y| over two tensors of one shape (read through f32 copies). */
static double rel_diff(const f2_tensor *x, const f2_tensor *y) {
  f2_tensor *a = f2_tensor_new(F2_F32, F2_CPU, x->ndim, x->shape), *b = f2_tensor_new(F2_F32, F2_CPU, y->ndim, y->shape);
  f2_copy(a, x), f2_copy(b, y);
  double num = 0, den = 0;
  for (int64_t i = 0; i < f2_tensor_numel(a); i++) {
    double p = ((float *)a->data)[i], q = ((float *)b->data)[i];
    num = p != p || q != q ? INFINITY : fmax(num, fabs(p - q));
    den = fmax(den, fabs(q));
  }
  f2_tensor_free(a), f2_tensor_free(b);
  return num / (den > 0 ? den : 1);
}

static void one_case(int nd, int ta, int tb, int64_t M, int64_t N, int64_t K, int32_t din, int32_t dout) {
  int64_t batch = nd == 3 ? rand_int(1, 3) : 0;
  int la = (int)rand_int(0, NARROWED), lb = (int)rand_int(0, LAYOUTS - 1), lo = (int)rand_int(0, NARROWED);
  f2_tensor *a = operand(din, batch, ta ? K : M, ta ? M : K, la), *b = operand(din, batch, tb ? N : K, tb ? K : N, lb);
  f2_tensor *out = operand(dout, batch, M, N, lo), *ref = operand(dout, batch, M, N, CONTIGUOUS);
  float alpha = (float)(0.5 + uniform()), beta = rand_int(0, 2) == 0 ? 0.0f : (float)(uniform() - 0.5);
  CHECK_OK(f2_copy(ref, out));
  if (beta == 0.0f) CHECK_OK(f2_fill(out, NAN));   /* beta = 0 must not read out */
  CHECK_OK(f2_matmul(out, a, b, ta, tb, alpha, beta));
  CHECK_OK(f2_cpu_matmul_ref(ref, a, b, ta, tb, alpha, beta));
  double e = rel_diff(out, ref), tol = dout == F2_BF16 ? 1e-2 : 1e-5;
  CHECK(e <= tol, "%dD %s%s %lldx%lldx%lld %s->%s layouts a%d b%d out%d beta %g: differs from the reference by %g",
        nd, ta ? "T" : "N", tb ? "T" : "N", (long long)M, (long long)N, (long long)K, f2_dtype_name(din),
        f2_dtype_name(dout), la, lb, lo, beta, e);
  f2_tensor_free(a), f2_tensor_free(b), f2_tensor_free(out), f2_tensor_free(ref);
}

static void test_against_reference(void) {
  int32_t floats[3] = {F2_F32, F2_BF16, F2_F16};
  for (int rep = 0; rep < 6; rep++)
    for (int nd = 2; nd <= 3; nd++)
      for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
          one_case(nd, ta, tb, rand_int(1, 90), rand_int(1, 200), rand_int(1, 200), F2_F32, F2_F32);
          one_case(nd, ta, tb, rand_int(1, 40), rand_int(1, 60), rand_int(1, 60), floats[rand_int(0, 2)],
                   rand_int(0, 1) ? F2_F32 : F2_BF16);
        }
  /* One vector each way, and a training-sized GEMM of each kind (forward, dgrad, wgrad with beta = 1). */
  one_case(2, 0, 1, 1, 300, 77, F2_F32, F2_F32);
  one_case(2, 1, 0, 64, 1, 129, F2_F32, F2_F32);
  one_case(2, 0, 1, 512, 1536, 576, F2_F32, F2_F32);
  one_case(2, 0, 0, 512, 576, 1536, F2_F32, F2_F32);
  one_case(2, 1, 0, 576, 576, 512, F2_F32, F2_F32);
}

/* Bitwise equality of two f32 tensors of one shape. */
static int same_bits(const f2_tensor *x, const f2_tensor *y) { return memcmp(x->data, y->data, f2_tensor_nbytes(x)) == 0; }

static void test_thread_count(void) {
  int threads = omp_get_max_threads();
  int64_t M = 512, N = 1536, K = 576, sa[2] = {M, K}, sb[2] = {N, K}, so[2] = {M, N};
  f2_tensor *a = f2_tensor_new(F2_F32, F2_CPU, 2, sa), *b = f2_tensor_new(F2_F32, F2_CPU, 2, sb);
  f2_tensor *o1 = f2_tensor_new(F2_F32, F2_CPU, 2, so), *o2 = f2_tensor_new(F2_F32, F2_CPU, 2, so);
  f2_tensor *w1 = f2_tensor_new(F2_F32, F2_CPU, 2, sb), *w2 = f2_tensor_new(F2_F32, F2_CPU, 2, sb);
  CHECK_OK(f2_rand_normal(a, (uint64_t)rand_int(0, 1 << 30), 0, 1));
  CHECK_OK(f2_rand_normal(b, (uint64_t)rand_int(0, 1 << 30), 0, 1));
  CHECK_OK(f2_fill(w1, 0.5));
  CHECK_OK(f2_fill(w2, 0.5));
  omp_set_num_threads(1);
  CHECK_OK(f2_matmul(o1, a, b, 0, 1, 1, 0));
  CHECK_OK(f2_matmul(w1, o1, a, 1, 0, 1, 1));   /* a weight gradient: 1536 x 576 over 512 rows */
  CHECK_OK(f2_unary(o1, o1, F2_OP_SILU));
  omp_set_num_threads(2);
  CHECK_OK(f2_matmul(o2, a, b, 0, 1, 1, 0));
  CHECK_OK(f2_matmul(w2, o2, a, 1, 0, 1, 1));
  CHECK_OK(f2_unary(o2, o2, F2_OP_SILU));
  CHECK(same_bits(o1, o2), "GEMM + silu on 1 and 2 threads differ");
  CHECK(same_bits(w1, w2), "weight-gradient GEMM on 1 and 2 threads differs");
  omp_set_num_threads(threads);
  f2_tensor_free(a), f2_tensor_free(b), f2_tensor_free(o1), f2_tensor_free(o2), f2_tensor_free(w1), f2_tensor_free(w2);
}

int main(void) {
  rng_state = f2t_seed();
  test_against_reference();
  test_thread_count();
  return f2t_done();
}
