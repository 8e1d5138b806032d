/* test_optim.c — AdamW and sum-of-squares on the CPU: against hand-computed first steps, against an
 * independent double-precision AdamW over many steps on fresh random data, and bad input. */
#include <string.h>

#include "f2test.h"

static f2_tensor *vec(int64_t n, int32_t dtype) { return f2_tensor_new(dtype, F2_CPU, 1, &n); }

static double urand(uint64_t *s) {
  *s = *s * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(*s >> 11) * 0x1.0p-53 * 2 - 1;
}

int main(void) {
  uint64_t seed = f2t_seed();

  /* Step 1 by hand: m = (1-b1) g, v = (1-b2) g^2, so m_hat = g, v_hat = g^2 and the update is
   * lr * g / (|g| + eps) after the decay p *= 1 - lr*wd. */
  {
    f2_tensor *p = vec(3, F2_F32), *m = vec(3, F2_F32), *v = vec(3, F2_F32), *g = vec(3, F2_F32);
    float *pp = p->data, *gg = g->data;
    float p0[3] = {1.0f, -2.0f, 0.5f}, g0[3] = {0.25f, -4.0f, 0.0f};
    for (int i = 0; i < 3; i++) pp[i] = p0[i], gg[i] = g0[i], ((float *)m->data)[i] = 0, ((float *)v->data)[i] = 0;
    f2_adamw_config c = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                         .grad_scale = 1.0f, .step = 1};
    CHECK_OK(f2_adamw_step(p, m, v, g, &c));
    for (int i = 0; i < 3; i++) {
      double expect = p0[i] * (1 - 0.1 * 0.1) - 0.1 * g0[i] / (fabs(g0[i]) + 1e-8);
      CHECK_CLOSE(pp[i], expect, 1e-6, 1e-7);
      CHECK_CLOSE(((float *)m->data)[i], 0.1 * g0[i], 1e-6, 0);
      CHECK_CLOSE(((float *)v->data)[i], 0.05 * g0[i] * g0[i], 1e-6, 0);
    }
    /* grad_scale multiplies the gradient before the moments (clipping). */
    c.step = 2;
    c.grad_scale = 0.5f;
    float m_before = ((float *)m->data)[1], v_before = ((float *)v->data)[1];
    CHECK_OK(f2_adamw_step(p, m, v, g, &c));
    CHECK_CLOSE(((float *)m->data)[1], 0.9 * m_before + 0.1 * (-2.0), 1e-6, 0);
    CHECK_CLOSE(((float *)v->data)[1], 0.95 * v_before + 0.05 * 4.0, 1e-6, 0);
    f2_tensor_free(p), f2_tensor_free(m), f2_tensor_free(v), f2_tensor_free(g);
  }

  /* Many steps on fresh random data vs an independent double-precision AdamW. */
  {
    enum { N = 1000, STEPS = 20 };
    f2_tensor *p = vec(N, F2_F32), *m = vec(N, F2_F32), *v = vec(N, F2_F32), *g = vec(N, F2_F32);
    static double rp[N], rm[N], rv[N];
    uint64_t s = seed;
    for (int i = 0; i < N; i++) {
      rp[i] = ((float *)p->data)[i] = (float)urand(&s);
      rm[i] = rv[i] = ((float *)m->data)[i] = ((float *)v->data)[i] = 0;
    }
    const double lr = 3e-3, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.05;
    for (int step = 1; step <= STEPS; step++) {
      for (int i = 0; i < N; i++) ((float *)g->data)[i] = (float)urand(&s);
      f2_adamw_config c = {.lr = (float)lr, .beta1 = (float)b1, .beta2 = (float)b2, .eps = (float)eps,
                           .weight_decay = (float)wd, .grad_scale = 1.0f, .step = step};
      CHECK_OK(f2_adamw_step(p, m, v, g, &c));
      for (int i = 0; i < N; i++) {
        double gi = ((float *)g->data)[i];
        rm[i] = b1 * rm[i] + (1 - b1) * gi;
        rv[i] = b2 * rv[i] + (1 - b2) * gi * gi;
        rp[i] = rp[i] * (1 - lr * wd) - lr * (rm[i] / (1 - pow(b1, step))) / (sqrt(rv[i] / (1 - pow(b2, step))) + eps);
      }
    }
    double max_err = 0;
    for (int i = 0; i < N; i++) max_err = fmax(max_err, fabs(((float *)p->data)[i] - rp[i]));
    CHECK(max_err < 1e-5, "AdamW drifted from the double reference by %g after %d steps", max_err, STEPS);
    f2_tensor_free(p), f2_tensor_free(m), f2_tensor_free(v), f2_tensor_free(g);
  }

  /* Sum of squares over several tensors, f32 and bf16. */
  {
    f2_tensor *a = vec(777, F2_F32), *b = vec(64, F2_BF16), *out = vec(1, F2_F32);
    uint64_t s = seed ^ 99;
    double expect = 0;
    for (int i = 0; i < 777; i++) {
      float x = (float)urand(&s);
      ((float *)a->data)[i] = x;
      expect += (double)x * x;
    }
    for (int i = 0; i < 64; i++) {
      uint16_t h = (uint16_t)(0x3f80 + (i % 50)); /* bf16 values in [1, 2) */
      ((uint16_t *)b->data)[i] = h;
      union { uint32_t u; float f; } u = {.u = (uint32_t)h << 16};
      expect += (double)u.f * u.f;
    }
    const f2_tensor *list[2] = {a, b};
    CHECK_OK(f2_sum_squares(out, list, 2));
    CHECK_CLOSE(*(float *)out->data, expect, 1e-6, 0);
    CHECK(f2_sum_squares(a, list, 2) == F2_ERR_ARG, "a 777-element out is refused");
    f2_tensor_free(a), f2_tensor_free(b), f2_tensor_free(out);
  }

  /* Bad input: mismatched sizes, wrong dtype, step 0 — each a clear error. */
  {
    f2_tensor *p = vec(4, F2_F32), *m = vec(4, F2_F32), *v = vec(5, F2_F32), *g = vec(4, F2_I32);
    f2_adamw_config c = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .grad_scale = 1, .step = 1};
    CHECK(f2_adamw_step(p, m, v, m, &c) == F2_ERR_ARG, "size mismatch refused");
    CHECK(strstr(f2_last_error(), "v has 5 elements") != NULL, "message names v: %s", f2_last_error());
    CHECK(f2_adamw_step(p, m, m, g, &c) == F2_ERR_ARG, "i32 grad refused");
    c.step = 0;
    CHECK(f2_adamw_step(p, m, m, m, &c) == F2_ERR_ARG, "step 0 refused");
    f2_tensor_free(p), f2_tensor_free(m), f2_tensor_free(v), f2_tensor_free(g);
  }
  return f2t_done();
}
