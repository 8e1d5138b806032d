/* test_fairy2.c — invariants of the CPU Fairy2i quantizer (FAIRY2I.md section 7): split/rebuild round
 * trip, post-training error figures on Gaussian matrices, shrinking residuals, scale granularities,
 * batch == single, determinism, dequantize and pack round trips, diagnostics, A8 fake-quant, bad input.
 * The codes themselves are checked against the independent numpy reference (test_fairy2_reference.py). */
#include "f2test.h"
#include "f2_rng.h"

#include <string.h>

static f2_tensor *new_tensor(int32_t dtype, int32_t ndim, int64_t a, int64_t b, int64_t c, int64_t d) {
  int64_t shape[4] = {a, b, c, d};
  return f2_tensor_new(dtype, F2_CPU, ndim, shape);
}

/* An (rows x cols) f32 matrix of N(0, std^2) from (seed, index). */
static f2_tensor *gaussian(uint64_t seed, int64_t rows, int64_t cols, double std) {
  f2_tensor *t = new_tensor(F2_F32, 2, rows, cols, 0, 0);
  float *p = t->data;
  for (int64_t i = 0; i < rows * cols; i++) p[i] = (float)(std * f2_rng_normal(seed, (uint64_t)i));
  return t;
}

static f2_quant_config config(int stages, int granularity, int group_size) {
  f2_quant_config c = {stages, granularity, group_size, 0};
  return c;
}

/* Relative squared error ||R - R_hat||^2 / ||R||^2 after quantizing R with cfg (R_hat in fp32). */
static double rel_mse(const f2_tensor *r, f2_quant_config cfg) {
  int64_t groups = f2_fairy2_scale_groups(&cfg, r->shape[0], r->shape[1]);
  f2_tensor *r_hat = new_tensor(F2_F32, 2, r->shape[0], r->shape[1], 0, 0);
  f2_tensor *scales = new_tensor(F2_F32, 3, cfg.stages, 4, groups, 0);
  CHECK_OK(f2_fairy2_quantize(r_hat, scales, NULL, r, &cfg));
  double num = 0, den = 0;
  const float *a = r->data, *b = r_hat->data;
  for (int64_t i = 0; i < f2_tensor_numel(r); i++) {
    num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    den += (double)a[i] * a[i];
  }
  f2_tensor_free(r_hat);
  f2_tensor_free(scales);
  return num / den;
}

static void test_split_rebuild(uint64_t seed) {
  f2_tensor *r = gaussian(seed, 38, 52, 3.0), *back = new_tensor(F2_F32, 2, 38, 52, 0, 0);
  f2_tensor *p[4];
  for (int i = 0; i < 4; i++) p[i] = new_tensor(F2_F32, 2, 19, 26, 0, 0);
  CHECK_OK(f2_fairy2_split(p[0], p[1], p[2], p[3], r));
  CHECK_OK(f2_fairy2_rebuild(back, p[0], p[1], p[2], p[3]));
  const float *a = r->data, *b = back->data, *ur = p[0]->data, *ui = p[1]->data, *wr = p[2]->data, *wi = p[3]->data;
  /* Each entry goes through two roundings at the magnitude of its partners: compare to the largest. */
  double worst = 0, largest = 0;
  for (int64_t i = 0; i < 38 * 52; i++) worst = fmax(worst, fabs((double)a[i] - b[i])), largest = fmax(largest, fabs(a[i]));
  CHECK(worst > 0 && worst < 2.4e-7 * largest, "rebuild(split(R)) differs from R by %g (largest |R| %g)", worst, largest);
  /* The formula, element by element: R11 = R[i, j] etc. with n = 19, m = 26. */
  int64_t i = 7, j = 11, n = 19, m = 26, W = 52;
  double r11 = a[i * W + j], r12 = a[i * W + m + j], r21 = a[(n + i) * W + j], r22 = a[(n + i) * W + m + j];
  CHECK_CLOSE(ur[i * m + j], (r11 + r22) / 2, 1e-6, 0);
  CHECK_CLOSE(ui[i * m + j], (r21 - r12) / 2, 1e-6, 0);
  CHECK_CLOSE(wr[i * m + j], (r11 - r22) / 2, 1e-6, 0);
  CHECK_CLOSE(wi[i * m + j], (r12 + r21) / 2, 1e-6, 0);
  /* A converted layer without quantization computes what the original computed: y = R x == rebuild(split(R)) x. */
  double y0 = 0, y1 = 0;
  for (int64_t c = 0; c < 52; c++) {
    double x = f2_rng_normal(seed + 1, (uint64_t)c);
    y0 += a[5 * W + c] * x;
    y1 += b[5 * W + c] * x;
  }
  CHECK_CLOSE(y1, y0, 1e-5, 1e-6);
  for (int k = 0; k < 4; k++) f2_tensor_free(p[k]);
  f2_tensor_free(r);
  f2_tensor_free(back);
}

/* Post-training reconstruction error on 256x256 N(0,1), averaged over 6 seeds (FAIRY2I.md section 6). */
static void test_ptq_error(uint64_t seed) {
  const double expect[3] = {0.361, 0.128, 0.057};
  double mean[3] = {0, 0, 0};
  for (int s = 0; s < 6; s++) {
    f2_tensor *r = gaussian(seed * 31 + (uint64_t)s, 256, 256, 1.0);
    for (int t = 0; t < 3; t++) mean[t] += rel_mse(r, config(t + 1, F2_FAIRY2_PER_TENSOR, 0)) / 6;
    f2_tensor_free(r);
  }
  for (int t = 0; t < 3; t++) {
    printf("T=%d: relative MSE %.4f (paper %.3f)\n", t + 1, mean[t], expect[t]);
    CHECK(fabs(mean[t] - expect[t]) <= 0.01, "T=%d relative MSE %.4f, expected %.3f +- 0.01", t + 1, mean[t], expect[t]);
  }
  /* Finer scales fit better: per row <= per tensor, per group of 8 <= per row. */
  f2_tensor *r = gaussian(seed + 77, 128, 256, 1.0);
  double tensor = rel_mse(r, config(2, F2_FAIRY2_PER_TENSOR, 0)), row = rel_mse(r, config(2, F2_FAIRY2_PER_ROW, 0));
  double group = rel_mse(r, config(2, F2_FAIRY2_PER_GROUP, 8));
  CHECK(row < tensor && group < row, "per tensor %.4f, per row %.4f, per group of 8 %.4f", tensor, row, group);
  f2_tensor_free(r);
}

/* Each stage shrinks the residual (stats' rel_error decreases), and the stats agree with R_hat. */
static void test_stages_and_stats(uint64_t seed) {
  int granularities[3] = {F2_FAIRY2_PER_TENSOR, F2_FAIRY2_PER_ROW, F2_FAIRY2_PER_GROUP};
  for (int g = 0; g < 3; g++) {
    f2_quant_config cfg = config(6, granularities[g], 5);
    f2_tensor *r = gaussian(seed + 100 + (uint64_t)g, 48, 90, 0.02);
    f2_fairy2_stage_stats st[6];
    CHECK_OK(f2_fairy2_stats(st, r, &cfg));
    for (int t = 1; t < 6; t++)
      CHECK(st[t].rel_error < st[t - 1].rel_error, "granularity %d: stage %d error %g >= stage %d error %g", g, t,
            st[t].rel_error, t - 1, st[t - 1].rel_error);
    for (int t = 0; t < 6; t++) {
      CHECK(st[t].real_share_u > 0.2 && st[t].real_share_u < 0.8, "stage %d: share of +-1 in U %g", t, st[t].real_share_u);
      CHECK(st[t].scale_mean[0] > 0 && st[t].scale_mean[3] > 0, "stage %d: scales %g %g", t, st[t].scale_mean[0],
            st[t].scale_mean[3]);
    }
    for (int t = 0; t < 6; t++) {
      f2_quant_config c = config(t + 1, granularities[g], 5);
      CHECK_CLOSE(sqrt(rel_mse(r, c)), st[t].rel_error, 1e-9, 1e-12);
    }
    f2_tensor_free(r);
  }
  /* Scale means of stage 0, per tensor: the axis means of FAIRY2I.md, recomputed here in double. */
  f2_tensor *r = gaussian(seed + 200, 20, 30, 1.0);
  f2_quant_config cfg = config(1, F2_FAIRY2_PER_TENSOR, 0);
  f2_fairy2_stage_stats st;
  CHECK_OK(f2_fairy2_stats(&st, r, &cfg));
  const float *a = r->data;
  double sum_re = 0, sum_im = 0, count_re = 0;
  for (int64_t i = 0; i < 10; i++)
    for (int64_t j = 0; j < 15; j++) {
      double re = ((double)a[i * 30 + j] + a[(10 + i) * 30 + 15 + j]) / 2, im = ((double)a[(10 + i) * 30 + j] - a[i * 30 + 15 + j]) / 2;
      if (fabs(re) > fabs(im)) sum_re += fabs(re), count_re++;   /* no ties in Gaussian data */
      else sum_im += fabs(im);
    }
  CHECK_CLOSE(st.scale_mean[0], sum_re / count_re, 1e-6, 0);
  CHECK_CLOSE(st.scale_mean[1], sum_im / (150 - count_re), 1e-6, 0);
  CHECK_CLOSE(st.real_share_u, count_re / 150, 1e-12, 0);
  f2_tensor_free(r);
}

/* Same input, same bits; batch == single; bf16 R_hat == RNE(fp32 R_hat); dequantize == R_hat; pack round trip. */
static void test_outputs(uint64_t seed) {
  const int64_t shapes[3][2] = {{96, 288}, {36, 18}, {64, 130}};
  f2_quant_config cfgs[3] = {config(2, F2_FAIRY2_PER_TENSOR, 0), config(3, F2_FAIRY2_PER_ROW, 0),
                             config(2, F2_FAIRY2_PER_GROUP, 16)};
  for (int c = 0; c < 3; c++) {
    f2_quant_config cfg = cfgs[c];
    f2_tensor *r[3], *hat[3], *hat16[3], *sc[3], *codes[3], *sc2[3], *codes2[3], *hat2[3];
    for (int l = 0; l < 3; l++) {
      int64_t rows = shapes[l][0], cols = shapes[l][1], groups = f2_fairy2_scale_groups(&cfg, rows, cols);
      r[l] = gaussian(seed + 300 + (uint64_t)(10 * c + l), rows, cols, 0.05);
      hat[l] = new_tensor(F2_F32, 2, rows, cols, 0, 0);
      hat2[l] = new_tensor(F2_F32, 2, rows, cols, 0, 0);
      hat16[l] = new_tensor(F2_BF16, 2, rows, cols, 0, 0);
      sc[l] = new_tensor(F2_F32, 3, cfg.stages, 4, groups, 0);
      sc2[l] = new_tensor(F2_F32, 3, cfg.stages, 4, groups, 0);
      codes[l] = new_tensor(F2_U8, 4, cfg.stages, 2, rows / 2, cols / 2);
      codes2[l] = new_tensor(F2_U8, 4, cfg.stages, 2, rows / 2, cols / 2);
      CHECK_OK(f2_fairy2_quantize(hat[l], sc[l], codes[l], r[l], &cfg));
    }
    CHECK_OK(f2_fairy2_quantize_batch(hat2, sc2, codes2, (const f2_tensor *const *)r, 3, &cfg));
    for (int l = 0; l < 3; l++) {
      CHECK(memcmp(hat[l]->data, hat2[l]->data, f2_tensor_nbytes(hat[l])) == 0, "cfg %d layer %d: batch R_hat", c, l);
      CHECK(memcmp(sc[l]->data, sc2[l]->data, f2_tensor_nbytes(sc[l])) == 0, "cfg %d layer %d: batch scales", c, l);
      CHECK(memcmp(codes[l]->data, codes2[l]->data, f2_tensor_nbytes(codes[l])) == 0, "cfg %d layer %d: batch codes", c, l);
      /* Again, alone: the same bits (determinism). */
      CHECK_OK(f2_fairy2_quantize(hat16[l], sc2[l], NULL, r[l], &cfg));
      CHECK(memcmp(sc[l]->data, sc2[l]->data, f2_tensor_nbytes(sc[l])) == 0, "cfg %d layer %d: rerun scales", c, l);
      const float *h = hat[l]->data;
      const uint16_t *h16 = hat16[l]->data;
      int64_t mismatched = 0;
      for (int64_t e = 0; e < f2_tensor_numel(hat[l]); e++) {
        union { float f; uint32_t u; } v = {h[e]};
        uint16_t rne = (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
        mismatched += rne != h16[e];
      }
      CHECK(mismatched == 0, "cfg %d layer %d: %lld bf16 entries are not RNE of the fp32 R_hat", c, l, (long long)mismatched);
      /* Every stage's codes use all four values; codes are 0..3. */
      const uint8_t *k = codes[l]->data;
      int64_t seen[4] = {0, 0, 0, 0}, bad = 0;
      for (int64_t e = 0; e < f2_tensor_numel(codes[l]); e++) k[e] < 4 ? seen[k[e]]++ : bad++;
      CHECK(bad == 0 && seen[0] && seen[1] && seen[2] && seen[3], "codes histogram %lld %lld %lld %lld, %lld bad",
            (long long)seen[0], (long long)seen[1], (long long)seen[2], (long long)seen[3], (long long)bad);
      /* Dequantize from codes and scales == R_hat, bit for bit. */
      CHECK_OK(f2_fairy2_dequantize(hat2[l], sc[l], codes[l], &cfg));
      CHECK(memcmp(hat[l]->data, hat2[l]->data, f2_tensor_nbytes(hat[l])) == 0, "cfg %d layer %d: dequantize", c, l);
      /* Pack: 2 bits per code, and back. */
      int64_t m = codes[l]->shape[3];
      f2_tensor *packed = new_tensor(F2_U8, 4, cfg.stages, 2, codes[l]->shape[2], (m + 3) / 4);
      CHECK_OK(f2_fairy2_pack(packed, codes[l]));
      memset(codes2[l]->data, 0xff, f2_tensor_nbytes(codes2[l]));
      CHECK_OK(f2_fairy2_unpack(codes2[l], packed));
      CHECK(memcmp(codes[l]->data, codes2[l]->data, f2_tensor_nbytes(codes[l])) == 0, "cfg %d layer %d: unpack(pack)", c, l);
      uint8_t *pk = packed->data;
      CHECK((pk[0] & 3) == k[0] && ((pk[0] >> 6) & 3) == k[3 < m ? 3 : 0], "packed byte layout");
      if (m % 4) { /* non-zero padding is rejected */
        pk[(m + 3) / 4 - 1] |= 0xc0;
        CHECK(f2_fairy2_unpack(codes2[l], packed) == F2_ERR_FORMAT, "padding bits: %s", f2_last_error());
      }
      f2_tensor_free(packed);
    }
    for (int l = 0; l < 3; l++) {
      f2_tensor *all[8] = {r[l], hat[l], hat16[l], sc[l], codes[l], sc2[l], codes2[l], hat2[l]};
      for (int i = 0; i < 8; i++) f2_tensor_free(all[i]);
    }
  }
}

static void test_fake_quant(uint64_t seed) {
  f2_tensor *x = gaussian(seed + 400, 5, 33, 2.0), *y = new_tensor(F2_F32, 2, 5, 33, 0, 0);
  float *px = x->data;
  for (int j = 0; j < 33; j++) px[2 * 33 + j] = 0;   /* an all-zero row stays zero */
  CHECK_OK(f2_fake_quant_int8(y, x));
  const float *py = y->data;
  for (int i = 0; i < 5; i++) {
    double absmax = 0, worst = 0;
    for (int j = 0; j < 33; j++) absmax = fmax(absmax, fabs(px[i * 33 + j]));
    double step = absmax / 127;
    for (int j = 0; j < 33; j++) {
      double q = py[i * 33 + j] / (step > 0 ? step : 1);
      worst = fmax(worst, fabs(py[i * 33 + j] - px[i * 33 + j]));
      CHECK(step == 0 ? py[i * 33 + j] == 0 : fabs(q - nearbyint(q)) < 1e-3, "row %d col %d: %g is not on the grid", i, j,
            py[i * 33 + j]);
    }
    CHECK(worst <= step / 2 * (1 + 1e-5) + 1e-30, "row %d: error %g > half a step %g", i, worst, step / 2);
  }
  f2_tensor_free(x);
  f2_tensor_free(y);
}

static void test_bad_input(void) {
  f2_quant_config cfg = config(1, F2_FAIRY2_PER_TENSOR, 0);
  f2_tensor *sc = new_tensor(F2_F32, 3, 1, 4, 1, 0);
  int64_t odd[3][2] = {{3, 4}, {4, 5}, {2, 0}};
  for (int i = 0; i < 3; i++) {
    f2_tensor *r = new_tensor(F2_F32, 2, odd[i][0], odd[i][1], 0, 0);
    memset(r->data, 0, f2_tensor_nbytes(r));
    CHECK(f2_fairy2_quantize(NULL, sc, NULL, r, &cfg) == F2_ERR_ARG && strstr(f2_last_error(), "even"), "odd %lldx%lld: %s",
          (long long)odd[i][0], (long long)odd[i][1], f2_last_error());
    f2_tensor_free(r);
  }
  f2_tensor *r = new_tensor(F2_F32, 2, 4, 6, 0, 0);
  float *p = r->data;
  for (int i = 0; i < 24; i++) p[i] = (float)i - 11.5f;
  f2_quant_config zero = config(0, 0, 0), bad_gran = config(1, 7, 0), bad_group = config(1, F2_FAIRY2_PER_GROUP, 0);
  CHECK(f2_fairy2_quantize(NULL, sc, NULL, r, &zero) == F2_ERR_ARG && strstr(f2_last_error(), "T >= 1"), "%s", f2_last_error());
  CHECK(f2_fairy2_quantize(NULL, sc, NULL, r, &bad_gran) == F2_ERR_ARG, "%s", f2_last_error());
  CHECK(f2_fairy2_quantize(NULL, sc, NULL, r, &bad_group) == F2_ERR_ARG && strstr(f2_last_error(), "group_size"), "%s",
        f2_last_error());
  CHECK(f2_fairy2_quantize(NULL, sc, NULL, r, NULL) == F2_ERR_ARG, "NULL config: %s", f2_last_error());
  CHECK(f2_fairy2_quantize(NULL, NULL, NULL, r, &cfg) == F2_ERR_ARG, "NULL scales: %s", f2_last_error());
  f2_tensor *sc_wrong = new_tensor(F2_F32, 3, 2, 4, 1, 0), *sc_i32 = new_tensor(F2_I32, 3, 1, 4, 1, 0);
  CHECK(f2_fairy2_quantize(NULL, sc_wrong, NULL, r, &cfg) == F2_ERR_ARG && strstr(f2_last_error(), "2x4x1"), "%s", f2_last_error());
  CHECK(f2_fairy2_quantize(NULL, sc_i32, NULL, r, &cfg) == F2_ERR_ARG && strstr(f2_last_error(), "i32"), "%s", f2_last_error());
  f2_tensor *hat_wrong = new_tensor(F2_F32, 2, 6, 4, 0, 0), *codes_wrong = new_tensor(F2_U8, 4, 1, 2, 3, 2);
  CHECK(f2_fairy2_quantize(hat_wrong, sc, NULL, r, &cfg) == F2_ERR_ARG && strstr(f2_last_error(), "R_hat"), "%s", f2_last_error());
  CHECK(f2_fairy2_quantize(NULL, sc, codes_wrong, r, &cfg) == F2_ERR_ARG && strstr(f2_last_error(), "codes"), "%s", f2_last_error());
  f2_tensor *rt = f2_tensor_transpose(r, 0, 1);
  f2_tensor *sc_t = new_tensor(F2_F32, 3, 1, 4, 1, 0);
  CHECK(f2_fairy2_quantize(NULL, sc_t, NULL, rt, &cfg) == F2_ERR_ARG, "transposed R: %s", f2_last_error());
  for (int b = 0; b < 3; b++) {
    p[5] = b == 0 ? NAN : b == 1 ? INFINITY : -INFINITY;
    CHECK(f2_fairy2_quantize(NULL, sc, NULL, r, &cfg) == F2_ERR_ARG && strstr(f2_last_error(), "non-finite") &&
              strstr(f2_last_error(), "[0, 5]"), "non-finite: %s", f2_last_error());
  }
  cfg.skip_finite_check = 1;
  CHECK_OK(f2_fairy2_quantize(NULL, sc, NULL, r, &cfg));
  CHECK(isnan(((float *)sc->data)[0]), "skip_finite_check: the scales are poisoned");
  f2_fairy2_stage_stats st;
  cfg.skip_finite_check = 0;
  CHECK(f2_fairy2_stats(&st, r, &cfg) == F2_ERR_ARG, "stats of non-finite R: %s", f2_last_error());
  CHECK(f2_fairy2_scale_groups(&cfg, 5, 4) == -1, "scale groups of an odd shape");
  f2_quant_config grouped = config(1, F2_FAIRY2_PER_GROUP, 64);
  CHECK(f2_fairy2_scale_groups(&grouped, 1536, 576) == 768 * 5, "per group 64 of 1536x576: %lld",
        (long long)f2_fairy2_scale_groups(&grouped, 1536, 576));
  f2_tensor *all[8] = {sc, r, sc_wrong, sc_i32, hat_wrong, codes_wrong, rt, sc_t};
  for (int i = 0; i < 8; i++) f2_tensor_free(all[i]);
}

int main(void) {
  uint64_t seed = f2t_seed();
  test_split_rebuild(seed);
  test_ptq_error(seed);
  test_stages_and_stats(seed);
  test_outputs(seed);
  test_fake_quant(seed);
  test_bad_input();
  return f2t_done();
}
