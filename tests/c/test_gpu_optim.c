/* test_gpu_optim.c — CUDA AdamW and sum of squares against the CPU reference on fresh random data,
 * f32 and bf16 gradients, odd sizes; the reduction is deterministic (same bits on a rerun). */
#include <string.h>

#include "f2test.h"

static f2_tensor *vec(int64_t n, int32_t dtype, int32_t device) { return f2_tensor_new(dtype, device, 1, &n); }

static f2_tensor *to(const f2_tensor *src, int32_t device) {
  f2_tensor *t = f2_tensor_new(src->dtype, device, src->ndim, src->shape);
  if (t && f2_copy(t, src) != F2_OK) {
    f2_tensor_free(t);
    return NULL;
  }
  return t;
}

int main(void) {
  f2t_require_gpu();
  uint64_t seed = f2t_seed();
  const int64_t sizes[] = {1, 1000, 123457};
  for (int si = 0; si < 3; si++) {
    for (int gd = 0; gd < 2; gd++) {
      int64_t n = sizes[si];
      int32_t gdtype = gd ? F2_BF16 : F2_F32;
      f2_tensor *p = vec(n, F2_F32, F2_CPU), *m = vec(n, F2_F32, F2_CPU), *v = vec(n, F2_F32, F2_CPU);
      f2_tensor *g = vec(n, gdtype, F2_CPU);
      CHECK_OK(f2_rand_normal(p, seed + si, 0, 1));
      CHECK_OK(f2_fill(m, 0));
      CHECK_OK(f2_fill(v, 0));
      f2_tensor *P = to(p, F2_CUDA), *M = to(m, F2_CUDA), *V = to(v, F2_CUDA);
      for (int step = 1; step <= 5; step++) {
        CHECK_OK(f2_rand_normal(g, seed * 31 + step, 0, 0.1));
        f2_tensor *G = to(g, F2_CUDA);
        f2_adamw_config c = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                             .grad_scale = 0.7f, .step = step};
        CHECK_OK(f2_adamw_step(p, m, v, g, &c));
        CHECK_OK(f2_adamw_step(P, M, V, G, &c));
        f2_tensor_free(G);
      }
      f2_tensor *back = to(P, F2_CPU);
      double max_err = 0, max_ref = 0;
      for (int64_t i = 0; i < n; i++) {
        max_err = fmax(max_err, fabs(((float *)back->data)[i] - ((float *)p->data)[i]));
        max_ref = fmax(max_ref, fabs(((float *)p->data)[i]));
      }
      CHECK(max_err <= 1e-5 * max_ref + 1e-7, "adamw n=%lld grad %s: max err %g (ref max %g)", (long long)n,
            gd ? "bf16" : "f32", max_err, max_ref);

      /* Sum of squares: GPU vs CPU, and bitwise repeatable. */
      f2_tensor *G = to(g, F2_CUDA);
      const f2_tensor *cpu_list[2] = {p, g}, *gpu_list[2] = {P, G};
      f2_tensor *out = vec(1, F2_F32, F2_CPU), *OUT = vec(1, F2_F32, F2_CUDA);
      CHECK_OK(f2_sum_squares(out, cpu_list, 2));
      CHECK_OK(f2_sum_squares(OUT, gpu_list, 2));
      f2_tensor *o1 = to(OUT, F2_CPU);
      CHECK_OK(f2_sum_squares(OUT, gpu_list, 2));
      f2_tensor *o2 = to(OUT, F2_CPU);
      float a = *(float *)o1->data, b = *(float *)o2->data, ref = *(float *)out->data;
      CHECK(memcmp(&a, &b, 4) == 0, "sum_squares not deterministic: %.9g vs %.9g", a, b);
      CHECK_CLOSE(a, ref, 1e-5, 1e-30);
      f2_tensor *list[] = {p, m, v, g, P, M, V, G, back, out, OUT, o1, o2};
      for (size_t i = 0; i < sizeof list / sizeof *list; i++) f2_tensor_free(list[i]);
    }
  }
  return f2t_done();
}
