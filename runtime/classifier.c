/* classifier.c — the LM head fused with softmax cross-entropy (f2_lm_head_cross_entropy): argument
 * checks, the device dispatch (GPU: kernels/classifier.cu) and the CPU reference. The [N, V] logits never
 * exist whole: chunk_rows rows at a time, logits_c = h_c W^T (f2_matmul into an f32 scratch [chunk, V]),
 * the cross-entropy of each row in double (as f2_cross_entropy_forward/backward in nn_cpu.c), dlogits in
 * place of the logits, then dweight += dlogits_c^T h_c and dh_c = dlogits_c W (f2_matmul; dlogits rounded
 * to h's dtype first, as the unfused bf16 pipeline would store them). The loss is the mean over every
 * counted row of the call: the rows are counted before the first chunk, and the row losses are summed
 * in row order, so the chunk size does not change the loss's bits. */
#include "f2_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The default chunk keeps its logits at most this big (f32 on the CPU, h's dtype on a GPU): SmolLM2
 * bf16 gets 4096-row chunks (bench_classifier, 16384 x 576 x 49152 fwd+bwd: 2048 rows 6.8 ms, 4096 rows
 * 5.9 ms, 8192 rows 5.6 ms). */
enum { LOGITS_BUDGET_BYTES = 384 << 20 };
/* Elements below which a loop stays on one thread (as nn_cpu.c). */
enum { PARALLEL_MIN = 1 << 19 };

enum { FLOAT = F2_ARG_FLOAT, F32_ONLY = F2_ARG_F32, I32_ONLY = F2_ARG_I32 };

/* Rows [r0, r0 + n) of a contiguous [rows, cols] tensor as a 2-D view (no storage reference: lives on
 * the stack for the duration of one call). */
static f2_tensor rows_view(const f2_tensor *t, int64_t r0, int64_t n, int64_t cols) {
  f2_tensor v = {.data = (char *)t->data + r0 * cols * (int64_t)f2_dtype_size(t->dtype), .dtype = t->dtype,
                 .device = t->device, .ndim = 2, .shape = {n, cols}, .stride = {cols, 1}};
  return v;
}

/* One chunk of rows: the loss of each (double, 0 when ignored) and, with backward, dlogits =
 * g * (softmax - onehot) in place of the logits (f32), exactly as f2_cross_entropy_backward computes
 * them (one exp per logit, kept, then scaled by g / sum). */
static void chunk_rows_ce(float *logits, double *row_loss, const int32_t *targets, int64_t n, int64_t vocab,
                          int32_t ignore_index, int backward, double g) {
#pragma omp parallel for schedule(static) if (n * vocab >= PARALLEL_MIN)
  for (int64_t r = 0; r < n; r++) {
    float *x = logits + r * vocab;
    int32_t t = targets[r];
    if (t == ignore_index) {
      row_loss[r] = 0;
      if (backward) memset(x, 0, (size_t)vocab * sizeof(float));
      continue;
    }
    double m = -INFINITY, s = 0;
    for (int64_t c = 0; c < vocab; c++) m = x[c] > m ? x[c] : m;   /* NaN ignored, as nn_cpu.c's row_max */
    double xt = x[t];
    if (!backward) {
      for (int64_t c = 0; c < vocab; c++) s += exp(x[c] - m);
    } else {
      for (int64_t c = 0; c < vocab; c++) {
        double p = exp(x[c] - m);
        x[c] = (float)p;
        s += p;
      }
      double scale = g / s;
      for (int64_t c = 0; c < vocab; c++) x[c] = (float)(scale * x[c] - (c == t ? g : 0));
    }
    row_loss[r] = (m + log(s)) - xt;
  }
}

static int lm_head_cpu(const char *op, f2_tensor *loss, f2_tensor *losses, f2_tensor *dh, f2_tensor *dweight,
                       const f2_tensor *h, const f2_tensor *weight, const f2_tensor *targets, int32_t ignore_index,
                       float dloss, int64_t chunk, int64_t rows, int64_t vocab, int64_t dim) {
  const int32_t *tg = (const int32_t *)targets->data;
  int64_t counted = 0;
  for (int64_t r = 0; r < rows; r++) {
    if (tg[r] == ignore_index) continue;
    if (tg[r] < 0 || tg[r] >= vocab)
      return F2_FAIL(F2_ERR_ARG, "%s: targets[%lld] = %d is outside [0, %lld) and not ignore_index %d", op,
                     (long long)r, (int)tg[r], (long long)vocab, (int)ignore_index);
    counted++;
  }
  int backward = dh != NULL;
  double g = counted ? (double)dloss / (double)counted : 0;
  int64_t c_max = chunk < rows ? chunk : rows;
  if (c_max < 1) c_max = 1;
  float *logits = malloc((size_t)(c_max * vocab) * sizeof(float));
  double *row_loss = malloc((size_t)c_max * sizeof(double));
  /* bf16 inputs: the GEMMs of the backward take dlogits in h's dtype. */
  f2_tensor *dl16 = NULL;
  if (backward && h->dtype != F2_F32) dl16 = f2_tensor_new(h->dtype, F2_CPU, 2, (const int64_t[]){c_max, vocab});
  int rc = F2_OK;
  if (!logits || !row_loss || (backward && h->dtype != F2_F32 && !dl16))
    rc = F2_FAIL(F2_ERR_MEM, "%s: out of host memory for a chunk of %lld x %lld logits", op, (long long)c_max,
                 (long long)vocab);
  double total = 0;
  for (int64_t r0 = 0; r0 < rows && rc == F2_OK; r0 += c_max) {
    int64_t n = rows - r0 < c_max ? rows - r0 : c_max;
    f2_tensor hv = rows_view(h, r0, n, dim);
    f2_tensor lv = {.data = logits, .dtype = F2_F32, .device = F2_CPU, .ndim = 2, .shape = {n, vocab},
                    .stride = {vocab, 1}};
    if ((rc = f2_matmul(&lv, &hv, weight, 0, 1, 1.0f, 0.0f)) != F2_OK) break;
    chunk_rows_ce(logits, row_loss, tg + r0, n, vocab, ignore_index, backward, g);
    for (int64_t r = 0; r < n; r++) {   /* row order, whatever the chunk: the same bits as the unfused op */
      total += row_loss[r];
      if (losses) ((float *)losses->data)[r0 + r] = (float)row_loss[r];
    }
    if (!backward) continue;
    f2_tensor dl = lv;
    if (dl16) {
      dl = rows_view(dl16, 0, n, vocab);
      if ((rc = f2_copy(&dl, &lv)) != F2_OK) break;
    }
    /* dweight before dh, so dh may be h itself: this chunk's rows of h are read for the last time here. */
    if (dweight && (rc = f2_matmul(dweight, &dl, &hv, 1, 0, 1.0f, 1.0f)) != F2_OK) break;
    f2_tensor dhv = rows_view(dh, r0, n, dim);
    rc = f2_matmul(&dhv, &dl, weight, 0, 0, 1.0f, 0.0f);
  }
  if (rc == F2_OK) ((float *)loss->data)[0] = counted ? (float)(total / (double)counted) : 0.0f;
  free(logits);
  free(row_loss);
  f2_tensor_free(dl16);
  return rc;
}

int f2_lm_head_cross_entropy(f2_tensor *loss, f2_tensor *losses, f2_tensor *dh, f2_tensor *dweight,
                             const f2_tensor *h, const f2_tensor *weight, const f2_tensor *targets,
                             int32_t ignore_index, float dloss, int64_t chunk_rows) {
  const char *op = "f2_lm_head_cross_entropy";
  F2_TRY(f2_check_arg(op, "h", h, FLOAT));
  F2_TRY(f2_check_arg(op, "weight", weight, FLOAT));
  F2_TRY(f2_check_arg(op, "targets", targets, I32_ONLY));
  F2_TRY(f2_check_arg(op, "loss", loss, F32_ONLY));
  if (weight->ndim != 2)
    return F2_FAIL(F2_ERR_ARG, "%s: weight must be 2-D [vocab, dim], has %d dims", op, (int)weight->ndim);
  int64_t vocab = weight->shape[0], dim = weight->shape[1], rows = f2_tensor_numel(targets);
  if (vocab < 1 || dim < 1)
    return F2_FAIL(F2_ERR_ARG, "%s: weight has shape [%lld,%lld], needs a vocabulary and a dim of at least 1", op,
                   (long long)vocab, (long long)dim);
  if (h->dtype != weight->dtype)
    return F2_FAIL(F2_ERR_ARG, "%s: h is %s but weight is %s (one dtype)", op, f2_dtype_name(h->dtype),
                   f2_dtype_name(weight->dtype));
  F2_TRY(f2_check_rows_cols(op, "h", h, rows, dim));
  if (f2_tensor_numel(loss) != 1) return F2_FAIL(F2_ERR_ARG, "%s: loss must have one element", op);
  if (losses) {
    F2_TRY(f2_check_arg(op, "losses", losses, F32_ONLY));
    if (losses->ndim != 1 || losses->shape[0] != rows) {
      char got[128];
      return F2_FAIL(F2_ERR_ARG, "%s: losses has shape %s, expected [%lld] (one per target)", op,
                     f2_shape_str(losses, got, sizeof got), (long long)rows);
    }
  }
  if (dh) {
    F2_TRY(f2_check_arg(op, "dh", dh, FLOAT));
    if (dh->dtype != h->dtype)
      return F2_FAIL(F2_ERR_ARG, "%s: dh is %s but h is %s (dh takes h's dtype)", op, f2_dtype_name(dh->dtype),
                     f2_dtype_name(h->dtype));
    F2_TRY(f2_check_rows_cols(op, "dh", dh, rows, dim));
    if (dh->data == weight->data) return F2_FAIL(F2_ERR_ARG, "%s: dh must not be weight", op);
  }
  if (dweight) {
    if (!dh) return F2_FAIL(F2_ERR_ARG, "%s: dweight given without dh (the backward runs only with dh)", op);
    F2_TRY(f2_check_arg(op, "dweight", dweight, F32_ONLY));
    if (dweight->ndim != 2 || dweight->shape[0] != vocab || dweight->shape[1] != dim) {
      char got[128];
      return F2_FAIL(F2_ERR_ARG, "%s: dweight has shape %s, expected [%lld,%lld] (weight's)", op,
                     f2_shape_str(dweight, got, sizeof got), (long long)vocab, (long long)dim);
    }
    if (dweight->data == weight->data || dweight->data == h->data)
      return F2_FAIL(F2_ERR_ARG, "%s: dweight must not be weight or h", op);
  }
  if (chunk_rows < 0) return F2_FAIL(F2_ERR_ARG, "%s: chunk_rows = %lld must be >= 0 (0: a default)", op, (long long)chunk_rows);
  const f2_tensor *all[] = {loss, losses, dh, dweight, h, weight, targets};
  const char *names[] = {"loss", "losses", "dh", "dweight", "h", "weight", "targets"};
  int gpu = 0;
  F2_TRY(f2_check_one_device(op, &gpu, all, names, 7));
  if (chunk_rows == 0) {
    /* The largest power of two of rows whose logits fit the budget: a batch of B x T rows (powers of
     * two) then splits into equal chunks, none a sliver. */
    int64_t bytes_per_row = vocab * (gpu ? (int64_t)f2_dtype_size(h->dtype) : (int64_t)sizeof(float));
    int64_t fit = LOGITS_BUDGET_BYTES / bytes_per_row;
    chunk_rows = 1;
    while (chunk_rows * 2 <= fit) chunk_rows *= 2;
  }
  if (gpu)
    return F2_PROFILED("lm_head_cross_entropy", f2_cuda_lm_head_cross_entropy(loss, losses, dh, dweight, h, weight,
                                                                              targets, ignore_index, dloss, chunk_rows));
  return lm_head_cpu(op, loss, losses, dh, dweight, h, weight, targets, ignore_index, dloss, chunk_rows, rows, vocab,
                     dim);
}
