/* test_optim_dev.c — f2_adamw_step_dev on the CPU (the reference of the CUDA kernel): hand-computed
 * first steps, clipping by the global norm on and off, the same bits as f2_adamw_step given the same
 * grad_scale over many steps on fresh random data (f32 and bf16 gradients), a non-finite sumsq that
 * skips the update, and bad arguments. */
#include <string.h>

#include "f2test.h"

static f2_tensor *vec(int64_t n, int32_t dtype) { return f2_tensor_new(dtype, F2_CPU, 1, &n); }
static float *fp(const f2_tensor *t) { return (float *)t->data; }

/* hparams for step `step` of AdamW with these settings (bias corrections as f2_adamw_step computes them). */
static void set_hparams(f2_tensor *h, float lr, float b1, float b2, float eps, float wd, int64_t step, float max_norm) {
  float *x = fp(h);
  x[F2_ADAMW_LR] = lr;
  x[F2_ADAMW_BETA1] = b1;
  x[F2_ADAMW_BETA2] = b2;
  x[F2_ADAMW_EPS] = eps;
  x[F2_ADAMW_WEIGHT_DECAY] = wd;
  x[F2_ADAMW_BC1] = 1.0f - powf(b1, (float)step);
  x[F2_ADAMW_BC2] = 1.0f - powf(b2, (float)step);
  x[F2_ADAMW_MAX_NORM] = max_norm;
}

/* Index of the first element whose bits differ, -1 when none. */
static int64_t first_diff(const f2_tensor *a, const f2_tensor *b) {
  int64_t n = f2_tensor_numel(a);
  for (int64_t i = 0; i < n; i++)
    if (memcmp(fp(a) + i, fp(b) + i, 4) != 0) return i;
  return -1;
}

int main(void) {
  uint64_t seed = f2t_seed();
  f2_tensor *h = vec(F2_ADAMW_HPARAMS, F2_F32), *ss = vec(1, F2_F32);

  /* Step 1 by hand (m_hat = g, v_hat = g^2: the update is lr * g / (|g| + eps) after the decay), with
   * clipping off (max_norm 0) however large the norm. */
  {
    f2_tensor *p = vec(3, F2_F32), *m = vec(3, F2_F32), *v = vec(3, F2_F32), *g = vec(3, F2_F32);
    float p0[3] = {1.0f, -2.0f, 0.5f}, g0[3] = {0.25f, -4.0f, 0.0f};
    for (int i = 0; i < 3; i++) fp(p)[i] = p0[i], fp(g)[i] = g0[i], fp(m)[i] = 0, fp(v)[i] = 0;
    set_hparams(h, 0.1f, 0.9f, 0.95f, 1e-8f, 0.1f, 1, 0.0f);
    fp(ss)[0] = 1e30f;
    CHECK_OK(f2_adamw_step_dev(p, m, v, g, h, ss));
    for (int i = 0; i < 3; i++) {
      double expect = p0[i] * (1 - 0.1 * 0.1) - 0.1 * g0[i] / (fabs(g0[i]) + 1e-8);
      CHECK_CLOSE(fp(p)[i], expect, 1e-6, 1e-7);
      CHECK_CLOSE(fp(m)[i], 0.1 * g0[i], 1e-6, 0);
      CHECK_CLOSE(fp(v)[i], 0.05 * g0[i] * g0[i], 1e-6, 0);
    }
    f2_tensor_free(p), f2_tensor_free(m), f2_tensor_free(v), f2_tensor_free(g);
  }

  /* Clipping: norm 4 > max_norm 1 scales the gradient by 1/4 before the moments; norm 0.5 < 1 and
   * max_norm 0 leave it alone. */
  {
    const float cases[3][2] = {{16.0f, 1.0f}, {0.25f, 1.0f}, {16.0f, 0.0f}}; /* sumsq, max_norm */
    const double scale[3] = {0.25, 1.0, 1.0};
    for (int k = 0; k < 3; k++) {
      f2_tensor *p = vec(2, F2_F32), *m = vec(2, F2_F32), *v = vec(2, F2_F32), *g = vec(2, F2_F32);
      for (int i = 0; i < 2; i++) fp(p)[i] = 1.0f, fp(m)[i] = 0.5f, fp(v)[i] = 0.25f, fp(g)[i] = i ? -2.0f : 3.0f;
      set_hparams(h, 0.01f, 0.9f, 0.99f, 1e-8f, 0.0f, 3, cases[k][1]);
      fp(ss)[0] = cases[k][0];
      CHECK_OK(f2_adamw_step_dev(p, m, v, g, h, ss));
      for (int i = 0; i < 2; i++) {
        double gi = (i ? -2.0 : 3.0) * scale[k], mi = 0.9 * 0.5 + 0.1 * gi, vi = 0.99 * 0.25 + 0.01 * gi * gi;
        double bc1 = 1 - pow(0.9, 3), bc2 = 1 - pow(0.99, 3);
        CHECK_CLOSE(fp(m)[i], mi, 1e-6, 0);
        CHECK_CLOSE(fp(v)[i], vi, 1e-6, 0);
        CHECK_CLOSE(fp(p)[i], 1.0 - 0.01 * (mi / bc1) / (sqrt(vi / bc2) + 1e-8), 1e-6, 1e-7);
      }
      f2_tensor_free(p), f2_tensor_free(m), f2_tensor_free(v), f2_tensor_free(g);
    }
  }

  /* Many steps on fresh random data, f32 and bf16 gradients: the same bits as f2_adamw_step with
   * grad_scale = max_norm / sqrt(sumsq) (clipped steps) or 1. */
  for (int gd = 0; gd < 2; gd++) {
    const int64_t n = 1001 + (int64_t)(seed % 97);
    const int32_t gdtype = gd ? F2_BF16 : F2_F32;
    f2_tensor *p = vec(n, F2_F32), *m = vec(n, F2_F32), *v = vec(n, F2_F32), *g = vec(n, gdtype);
    f2_tensor *p2 = vec(n, F2_F32), *m2 = vec(n, F2_F32), *v2 = vec(n, F2_F32);
    CHECK_OK(f2_rand_normal(p, seed + gd, 0, 1));
    CHECK_OK(f2_fill(m, 0));
    CHECK_OK(f2_fill(v, 0));
    CHECK_OK(f2_copy(p2, p));
    CHECK_OK(f2_copy(m2, m));
    CHECK_OK(f2_copy(v2, v));
    int clipped = 0;
    for (int step = 1; step <= 12; step++) {
      CHECK_OK(f2_rand_normal(g, seed * 7 + (uint64_t)step, 0, 0.05 * step));
      const f2_tensor *list[1] = {g};
      CHECK_OK(f2_sum_squares(ss, list, 1));
      float norm = sqrtf(fp(ss)[0]), max_norm = step % 3 == 0 ? 0.0f : 2.0f;
      f2_adamw_config c = {.lr = 3e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                           .grad_scale = max_norm > 0 && norm > max_norm ? max_norm / norm : 1.0f, .step = step};
      clipped += c.grad_scale != 1.0f;
      set_hparams(h, c.lr, c.beta1, c.beta2, c.eps, c.weight_decay, step, max_norm);
      CHECK_OK(f2_adamw_step_dev(p, m, v, g, h, ss));
      CHECK_OK(f2_adamw_step(p2, m2, v2, g, &c));
    }
    CHECK(clipped >= 3, "only %d of 12 steps were clipped: the test does not exercise clipping", clipped);
    const char *names[3] = {"param", "m", "v"};
    const f2_tensor *a[3] = {p, m, v}, *b[3] = {p2, m2, v2};
    for (int k = 0; k < 3; k++) {
      int64_t i = first_diff(a[k], b[k]);
      CHECK(i < 0, "grad %s: %s differs from f2_adamw_step at %lld: %.9g vs %.9g", gd ? "bf16" : "f32", names[k],
            (long long)i, i < 0 ? 0.0 : fp(a[k])[i], i < 0 ? 0.0 : fp(b[k])[i]);
    }

    /* A non-finite sumsq (an overflowed or NaN gradient) skips the step: nothing changes. */
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    for (int k = 0; k < 3; k++) {
      fp(ss)[0] = bad[k];
      set_hparams(h, 3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 13, 1.0f);
      CHECK_OK(f2_adamw_step_dev(p, m, v, g, h, ss));
      CHECK(first_diff(p, p2) < 0 && first_diff(m, m2) < 0 && first_diff(v, v2) < 0,
            "sumsq %g changed the state", (double)bad[k]);
    }
    f2_tensor *list[] = {p, m, v, g, p2, m2, v2};
    for (size_t i = 0; i < sizeof list / sizeof *list; i++) f2_tensor_free(list[i]);
  }

  /* Bad arguments: each a clear F2_ERR_ARG, nothing written. */
  {
    f2_tensor *p = vec(4, F2_F32), *m = vec(4, F2_F32), *v = vec(4, F2_F32), *g = vec(4, F2_F32);
    f2_tensor *h7 = vec(7, F2_F32), *hi = vec(F2_ADAMW_HPARAMS, F2_I32), *s2 = vec(2, F2_F32), *v5 = vec(5, F2_F32);
    f2_tensor *gi = vec(4, F2_I32);
    set_hparams(h, 0.1f, 0.9f, 0.95f, 1e-8f, 0.0f, 1, 0.0f);
    fp(ss)[0] = 1.0f;
    CHECK(f2_adamw_step_dev(p, m, v, g, h7, ss) == F2_ERR_ARG, "7 hparams accepted");
    CHECK(strstr(f2_last_error(), "hparams") != NULL, "message names hparams: %s", f2_last_error());
    CHECK(f2_adamw_step_dev(p, m, v, g, hi, ss) == F2_ERR_ARG, "i32 hparams accepted");
    CHECK(f2_adamw_step_dev(p, m, v, g, h, s2) == F2_ERR_ARG, "2-element sumsq accepted");
    CHECK(strstr(f2_last_error(), "sumsq") != NULL, "message names sumsq: %s", f2_last_error());
    CHECK(f2_adamw_step_dev(p, m, v, g, NULL, ss) == F2_ERR_ARG, "NULL hparams accepted");
    CHECK(f2_adamw_step_dev(p, m, v, g, h, NULL) == F2_ERR_ARG, "NULL sumsq accepted");
    CHECK(f2_adamw_step_dev(p, m, v5, g, h, ss) == F2_ERR_ARG, "size mismatch accepted");
    CHECK(strstr(f2_last_error(), "v has 5 elements") != NULL, "message names v: %s", f2_last_error());
    CHECK(f2_adamw_step_dev(p, m, v, gi, h, ss) == F2_ERR_ARG, "i32 grad accepted");
    f2_tensor *list[] = {p, m, v, g, h7, hi, s2, v5, gi};
    for (size_t i = 0; i < sizeof list / sizeof *list; i++) f2_tensor_free(list[i]);
  }
  f2_tensor_free(h);
  f2_tensor_free(ss);
  return f2t_done();
}
