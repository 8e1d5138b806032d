/* test_gpu_fairy2.c — the CUDA Fairy2i quantizer against the CPU reference on random layers of
 * SmolLM2-135M's shapes: identical codes, the same scales (the same canonical double sums on both) and
 * R_hat bits, bf16 and f32 R_hat, T = 1..3, per-tensor / per-row / per-group scales, a batched call,
 * determinism across runs, split/rebuild, A8 fake-quant, and non-finite input. Skips without a GPU. */
#include "f2test.h"
#include "f2_rng.h"

#include <string.h>

static f2_tensor *host(int32_t dtype, int32_t ndim, const int64_t *shape) { return f2_tensor_new(dtype, F2_CPU, ndim, shape); }

static f2_tensor *to_gpu(const f2_tensor *t) {
  f2_tensor *g = f2_tensor_new(t->dtype, F2_CUDA, t->ndim, t->shape);
  CHECK_OK(f2_copy(g, t));
  return g;
}

static f2_tensor *to_host(const f2_tensor *g) {
  f2_tensor *t = host(g->dtype, g->ndim, g->shape);
  CHECK_OK(f2_copy(t, g));
  return t;
}

/* Elements whose bytes differ between a CPU tensor and a GPU tensor of the same shape and dtype. */
static int64_t differing(const f2_tensor *cpu, const f2_tensor *gpu) {
  f2_tensor *back = to_host(gpu);
  size_t size = f2_dtype_size(cpu->dtype);
  int64_t count = 0;
  for (int64_t e = 0; e < f2_tensor_numel(cpu); e++)
    count += memcmp((const char *)cpu->data + e * size, (const char *)back->data + e * size, size) != 0;
  f2_tensor_free(back);
  return count;
}

static double max_rel_diff(const f2_tensor *cpu, const f2_tensor *gpu) {
  f2_tensor *back = to_host(gpu);
  const float *a = cpu->data, *b = back->data;
  double worst = 0;
  for (int64_t e = 0; e < f2_tensor_numel(cpu); e++) worst = fmax(worst, fabs((double)a[e] - b[e]) / fabs(a[e]));
  f2_tensor_free(back);
  return worst;
}

static f2_tensor *gaussian(uint64_t seed, int64_t rows, int64_t cols, double std) {
  int64_t shape[2] = {rows, cols};
  f2_tensor *t = host(F2_F32, 2, shape);
  float *p = t->data;
  for (int64_t i = 0; i < rows * cols; i++) p[i] = (float)(std * f2_rng_normal(seed, (uint64_t)i));
  return t;
}

enum { LAYERS = 4 };
static const int64_t smollm2_shapes[LAYERS][2] = {{576, 576}, {192, 576}, {1536, 576}, {576, 1536}};

/* One configuration over all four shapes: CPU one by one, GPU batched (twice, for determinism) and
 * one by one. */
static void compare_config(uint64_t seed, f2_quant_config cfg, int32_t hat_dtype) {
  f2_tensor *r[LAYERS], *gr[LAYERS], *hat[LAYERS], *sc[LAYERS], *codes[LAYERS];
  f2_tensor *ghat[LAYERS], *gsc[LAYERS], *gcodes[LAYERS], *ghat2[LAYERS], *gsc2[LAYERS], *gcodes2[LAYERS];
  for (int l = 0; l < LAYERS; l++) {
    int64_t rows = smollm2_shapes[l][0], cols = smollm2_shapes[l][1];
    int64_t groups = f2_fairy2_scale_groups(&cfg, rows, cols);
    int64_t shape_r[2] = {rows, cols}, shape_s[3] = {cfg.stages, 4, groups}, shape_c[4] = {cfg.stages, 2, rows / 2, cols / 2};
    r[l] = gaussian(seed + (uint64_t)l, rows, cols, 0.02 * (l + 1));
    gr[l] = to_gpu(r[l]);
    hat[l] = host(hat_dtype, 2, shape_r);
    sc[l] = host(F2_F32, 3, shape_s);
    codes[l] = host(F2_U8, 4, shape_c);
    ghat[l] = f2_tensor_new(hat_dtype, F2_CUDA, 2, shape_r);
    gsc[l] = f2_tensor_new(F2_F32, F2_CUDA, 3, shape_s);
    gcodes[l] = f2_tensor_new(F2_U8, F2_CUDA, 4, shape_c);
    ghat2[l] = f2_tensor_new(hat_dtype, F2_CUDA, 2, shape_r);
    gsc2[l] = f2_tensor_new(F2_F32, F2_CUDA, 3, shape_s);
    gcodes2[l] = f2_tensor_new(F2_U8, F2_CUDA, 4, shape_c);
    CHECK_OK(f2_fairy2_quantize(hat[l], sc[l], codes[l], r[l], &cfg));
  }
  const char *label[3] = {"per tensor", "per row", "per group"};
  for (int run = 0; run < 2; run++) {
    CHECK_OK(f2_fairy2_quantize_batch(ghat, gsc, gcodes, (const f2_tensor *const *)gr, LAYERS, &cfg));
    for (int l = 0; l < LAYERS; l++) {
      int64_t codes_off = differing(codes[l], gcodes[l]), scales_off = differing(sc[l], gsc[l]);
      int64_t hat_off = differing(hat[l], ghat[l]);
      CHECK(codes_off == 0, "%s T=%d %lldx%lld: %lld codes differ", label[cfg.granularity], cfg.stages,
            (long long)smollm2_shapes[l][0], (long long)smollm2_shapes[l][1], (long long)codes_off);
      double rel = max_rel_diff(sc[l], gsc[l]);
      CHECK(rel <= 1e-6, "%s T=%d layer %d: scales differ by %g relative", label[cfg.granularity], cfg.stages, l, rel);
      CHECK(scales_off == 0, "%s T=%d layer %d: %lld scales differ in their bits (max rel %g)", label[cfg.granularity],
            cfg.stages, l, (long long)scales_off, rel);
      CHECK(hat_off == 0, "%s T=%d layer %d: %lld R_hat entries differ", label[cfg.granularity], cfg.stages, l,
            (long long)hat_off);
    }
  }
  /* One by one, without codes: the same bits as the batch. */
  for (int l = 0; l < LAYERS; l++) {
    CHECK_OK(f2_fairy2_quantize(ghat2[l], gsc2[l], NULL, gr[l], &cfg));
    CHECK_OK(f2_fairy2_quantize(NULL, gsc2[l], gcodes2[l], gr[l], &cfg));
    CHECK(differing(hat[l], ghat2[l]) == 0 && differing(sc[l], gsc2[l]) == 0 && differing(codes[l], gcodes2[l]) == 0,
          "%s T=%d layer %d: single-layer call differs", label[cfg.granularity], cfg.stages, l);
  }
  for (int l = 0; l < LAYERS; l++) {
    f2_tensor *all[12] = {r[l], gr[l], hat[l], sc[l], codes[l], ghat[l], gsc[l], gcodes[l], ghat2[l], gsc2[l], gcodes2[l], NULL};
    for (int i = 0; i < 11; i++) f2_tensor_free(all[i]);
  }
}

static void test_split_rebuild(uint64_t seed) {
  f2_tensor *r = gaussian(seed + 50, 192, 576, 1.0), *gr = to_gpu(r);
  int64_t plane[2] = {96, 288};
  f2_tensor *p[4], *gp[4];
  for (int i = 0; i < 4; i++) p[i] = host(F2_F32, 2, plane), gp[i] = f2_tensor_new(F2_F32, F2_CUDA, 2, plane);
  CHECK_OK(f2_fairy2_split(p[0], p[1], p[2], p[3], r));
  CHECK_OK(f2_fairy2_split(gp[0], gp[1], gp[2], gp[3], gr));
  for (int i = 0; i < 4; i++) CHECK(differing(p[i], gp[i]) == 0, "split plane %d differs", i);
  f2_tensor *back = host(F2_F32, 2, r->shape), *gback = f2_tensor_new(F2_F32, F2_CUDA, 2, r->shape);
  CHECK_OK(f2_fairy2_rebuild(back, p[0], p[1], p[2], p[3]));
  CHECK_OK(f2_fairy2_rebuild(gback, gp[0], gp[1], gp[2], gp[3]));
  CHECK(differing(back, gback) == 0, "rebuild differs");
  for (int i = 0; i < 4; i++) f2_tensor_free(p[i]), f2_tensor_free(gp[i]);
  f2_tensor_free(r), f2_tensor_free(gr), f2_tensor_free(back), f2_tensor_free(gback);
}

static void test_fake_quant(uint64_t seed) {
  int32_t dtypes[2] = {F2_F32, F2_BF16};
  for (int d = 0; d < 2; d++) {
    int64_t shape[2] = {37, 1000};
    f2_tensor *x32 = gaussian(seed + 60, 37, 1000, 3.0), *x = host(dtypes[d], 2, shape), *y = host(dtypes[d], 2, shape);
    CHECK_OK(f2_copy(x, x32));
    f2_tensor *gx = to_gpu(x), *gy = f2_tensor_new(dtypes[d], F2_CUDA, 2, shape);
    CHECK_OK(f2_fake_quant_int8(y, x));
    CHECK_OK(f2_fake_quant_int8(gy, gx));
    CHECK(differing(y, gy) == 0, "fake quant int8 (%s) differs", f2_dtype_name(dtypes[d]));
    f2_tensor_free(x32), f2_tensor_free(x), f2_tensor_free(y), f2_tensor_free(gx), f2_tensor_free(gy);
  }
}

static void test_nonfinite(uint64_t seed) {
  f2_tensor *r = gaussian(seed + 70, 64, 96, 1.0);
  ((float *)r->data)[37 * 96 + 81] = NAN;
  ((float *)r->data)[50 * 96 + 3] = INFINITY;
  f2_tensor *gr = to_gpu(r);
  int64_t shape_s[3] = {2, 4, 1};
  f2_tensor *gsc = f2_tensor_new(F2_F32, F2_CUDA, 3, shape_s);
  f2_quant_config cfg = {2, F2_FAIRY2_PER_TENSOR, 0, 0};
  CHECK(f2_fairy2_quantize(NULL, gsc, NULL, gr, &cfg) == F2_ERR_ARG && strstr(f2_last_error(), "[37, 81]"),
        "GPU non-finite: %s", f2_last_error());
  cfg.skip_finite_check = 1;
  CHECK_OK(f2_fairy2_quantize(NULL, gsc, NULL, gr, &cfg));
  f2_tensor *sc = to_host(gsc);
  CHECK(isnan(((float *)sc->data)[0]) && isnan(((float *)sc->data)[7]), "GPU skip_finite_check: NaN scales");
  f2_quant_config rows = {1, F2_FAIRY2_PER_ROW, 0, 0};
  int64_t shape_rows[3] = {1, 4, 32};
  f2_tensor *gsc_rows = f2_tensor_new(F2_F32, F2_CUDA, 3, shape_rows);
  CHECK(f2_fairy2_quantize(NULL, gsc_rows, NULL, gr, &rows) == F2_ERR_ARG && strstr(f2_last_error(), "[37, 81]"),
        "GPU per-row non-finite: %s", f2_last_error());
  f2_tensor_free(r), f2_tensor_free(gr), f2_tensor_free(gsc), f2_tensor_free(sc), f2_tensor_free(gsc_rows);
}

int main(void) {
  f2t_require_gpu();
  uint64_t seed = f2t_seed();
  for (int t = 1; t <= 3; t++) {
    f2_quant_config cfg = {t, F2_FAIRY2_PER_TENSOR, 0, 0};
    compare_config(seed + 1000 * (uint64_t)t, cfg, t == 2 ? F2_F32 : F2_BF16);
  }
  f2_quant_config per_row = {2, F2_FAIRY2_PER_ROW, 0, 0}, per_group = {3, F2_FAIRY2_PER_GROUP, 64, 0};
  compare_config(seed + 5000, per_row, F2_BF16);
  compare_config(seed + 6000, per_group, F2_F32);
  test_split_rebuild(seed);
  test_fake_quant(seed);
  test_nonfinite(seed);
  return f2t_done();
}
