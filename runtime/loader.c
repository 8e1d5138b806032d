/* loader.c — draws training windows from token shards as a pure function of (seed, step, sample),
 * so resuming needs only the step, and walks the held-out shards in a fixed evaluation order.
 * The sampling rule and the evaluation protocol are stated in docs/data.md. */
#include "f2_internal.h"
#include "f2_rng.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
  f2_shard *shard;
  int64_t tokens;
  int64_t starts_before;   /* window starts in the earlier shards of its source */
  int64_t evals_before;    /* evaluation windows in all earlier shards of the loader */
} loader_shard;

typedef struct {
  double weight;
  double weight_before;    /* sum of the earlier sources' weights */
  int32_t first, count;    /* its shards: shards[first .. first + count) */
  int64_t starts;          /* window starts over all its shards */
} loader_source;

struct f2_loader {
  int32_t seq_len;
  uint64_t seed;
  loader_shard *shards;
  int32_t shard_count;
  loader_source *sources;
  int32_t source_count;
  double total_weight;
  int64_t eval_windows;
};

f2_loader *f2_loader_new(int32_t seq_len, uint64_t seed) {
  if (seq_len < 1) return F2_FAIL_NULL(F2_ERR_ARG, "loader: seq_len %d must be >= 1", (int)seq_len);
  f2_loader *l = calloc(1, sizeof *l);
  if (!l) return F2_FAIL_NULL(F2_ERR_MEM, "out of host memory");
  l->seq_len = seq_len;
  l->seed = seed;
  return l;
}

void f2_loader_free(f2_loader *l) {
  if (!l) return;
  for (int32_t i = 0; i < l->shard_count; i++) f2_shard_close(l->shards[i].shard);
  free(l->shards);
  free(l->sources);
  free(l);
}

/* Windows of the evaluation walk in a shard of n tokens: one per seq_len new targets. */
static int64_t eval_windows_of(int64_t n, int32_t seq_len) { return n < 2 ? 0 : (n - 1 + seq_len - 1) / seq_len; }

int f2_loader_add_source(f2_loader *l, double weight, const char *const *paths, int32_t count) {
  if (!l || (count > 0 && !paths)) return F2_FAIL(F2_ERR_ARG, "f2_loader_add_source: NULL argument");
  if (!(weight >= 0) || weight > 1e300) return F2_FAIL(F2_ERR_ARG, "loader: source %d weight %g must be finite and >= 0", (int)l->source_count, weight);
  if (count < 1) return F2_FAIL(F2_ERR_ARG, "loader: source %d has no shards", (int)l->source_count);
  loader_shard *shards = realloc(l->shards, sizeof *shards * (size_t)(l->shard_count + count));
  if (!shards) return F2_FAIL(F2_ERR_MEM, "out of host memory");
  l->shards = shards;
  loader_source *sources = realloc(l->sources, sizeof *sources * (size_t)(l->source_count + 1));
  if (!sources) return F2_FAIL(F2_ERR_MEM, "out of host memory");
  l->sources = sources;

  loader_source src = {.weight = weight, .weight_before = l->total_weight, .first = l->shard_count, .count = 0};
  int64_t evals = l->eval_windows;
  int rc = F2_OK;
  for (int32_t i = 0; i < count && rc == F2_OK; i++) {
    f2_shard *s = f2_shard_open(paths[i]);
    if (!s) {
      rc = F2_ERR_FORMAT;   /* the message is f2_shard_open's */
      break;
    }
    f2_shard_info info, first;
    f2_shard_get_info(&info, s);
    if (l->shard_count + i > 0) {
      const f2_shard *f = i > 0 ? shards[src.first].shard : shards[0].shard;
      f2_shard_get_info(&first, f);
      if (info.tokenizer_id != first.tokenizer_id || info.vocab_size != first.vocab_size)
        rc = F2_FAIL(F2_ERR_ARG, "loader: shard '%s' comes from tokenizer %016llx (vocab %d) but '%s' from %016llx (vocab %d); "
                     "the shards of one loader must share a tokenizer", paths[i], (unsigned long long)info.tokenizer_id,
                     (int)info.vocab_size, f2_shard_path(f), (unsigned long long)first.tokenizer_id, (int)first.vocab_size);
    }
    shards[src.first + i] = (loader_shard){.shard = s, .tokens = info.token_count, .starts_before = src.starts,
                                           .evals_before = evals};
    src.count++;
    if (info.token_count > l->seq_len) src.starts += info.token_count - l->seq_len;
    evals += eval_windows_of(info.token_count, l->seq_len);
  }
  if (rc == F2_OK && src.starts == 0 && weight > 0)
    rc = F2_FAIL(F2_ERR_ARG, "loader: source %d ('%s'...): no shard holds seq_len + 1 = %d tokens", (int)l->source_count,
                 paths[0], (int)l->seq_len + 1);
  if (rc != F2_OK) {
    for (int32_t i = 0; i < src.count; i++) f2_shard_close(shards[src.first + i].shard);
    return rc;
  }
  l->shard_count += count;
  l->sources[l->source_count++] = src;
  l->total_weight += weight;
  l->eval_windows = evals;
  return F2_OK;
}

/* floor(bits * n / 2^64): uniform on [0, n) up to n / 2^64, with no division. */
static int64_t scale_bits(uint64_t bits, int64_t n) { return (int64_t)(((unsigned __int128)bits * (uint64_t)n) >> 64); }

int f2_loader_window(f2_window *out, const f2_loader *l, int64_t step, int64_t sample) {
  if (!out || !l) return F2_FAIL(F2_ERR_ARG, "f2_loader_window: NULL argument");
  if (step < 0 || sample < 0) return F2_FAIL(F2_ERR_ARG, "loader: step %lld and sample %lld must be >= 0", (long long)step, (long long)sample);
  if (!(l->total_weight > 0)) return F2_FAIL(F2_ERR_ARG, "loader: no source with a positive weight");
  /* A per-step key, then two draws per sample: the source, then the window start. */
  uint64_t key = f2_rng_bits(l->seed, (uint64_t)step);
  double u = (double)(f2_rng_bits(key, 2 * (uint64_t)sample) >> 11) * 0x1.0p-53 * l->total_weight;
  int32_t si = l->source_count - 1;
  for (int32_t i = 0; i < l->source_count; i++)
    if (u < l->sources[i].weight_before + l->sources[i].weight && l->sources[i].weight > 0) {
      si = i;
      break;
    }
  while (l->sources[si].weight <= 0) si--;   /* rounding at the top end: the last weighted source */
  const loader_source *src = &l->sources[si];
  int64_t p = scale_bits(f2_rng_bits(key, 2 * (uint64_t)sample + 1), src->starts);
  /* The shard holding start p: the last one whose starts_before <= p. A shard too short for one
   * window adds no starts, so the shard after it has the same starts_before and wins; a short last
   * shard's starts_before is the source's total, above any p. */
  int32_t lo = src->first, hi = src->first + src->count - 1;
  while (lo < hi) {
    int32_t mid = lo + (hi - lo + 1) / 2;
    if (l->shards[mid].starts_before <= p) lo = mid;
    else hi = mid - 1;
  }
  out->source = si;
  out->shard = lo - src->first;
  out->start = p - l->shards[lo].starts_before;
  return F2_OK;
}

static int check_rows(const char *what, const f2_tensor *t, int64_t cols) {
  if (!t) return F2_FAIL(F2_ERR_ARG, "loader: %s is NULL", what);
  if (t->dtype != F2_I32 || t->device != F2_CPU || t->ndim != 2 || t->shape[1] != cols || !f2_tensor_is_contiguous(t))
    return F2_FAIL(F2_ERR_ARG, "loader: %s must be an i32 CPU contiguous [B, %lld] tensor (got %s, %d dims, last %lld)", what,
                   (long long)cols, f2_dtype_name(t->dtype), (int)t->ndim, (long long)(t->ndim ? t->shape[t->ndim - 1] : 0));
  return F2_OK;
}

int f2_loader_batch(f2_tensor *inputs, f2_tensor *targets, const f2_loader *l, int64_t step, int64_t first_sample) {
  if (!l) return F2_FAIL(F2_ERR_ARG, "f2_loader_batch: loader is NULL");
  int64_t T = l->seq_len;
  F2_TRY(check_rows("inputs", inputs, targets ? T : T + 1));
  if (targets) {
    F2_TRY(check_rows("targets", targets, T));
    if (targets->shape[0] != inputs->shape[0])
      return F2_FAIL(F2_ERR_ARG, "loader: inputs have %lld rows, targets %lld", (long long)inputs->shape[0], (long long)targets->shape[0]);
  }
  int32_t *in = inputs->data, *tg = targets ? targets->data : NULL;
  for (int64_t b = 0; b < inputs->shape[0]; b++) {
    f2_window w;
    F2_TRY(f2_loader_window(&w, l, step, first_sample + b));
    const f2_shard *s = l->shards[l->sources[w.source].first + w.shard].shard;
    if (tg) {
      F2_TRY(f2_shard_read(in + b * T, s, w.start, T));
      F2_TRY(f2_shard_read(tg + b * T, s, w.start + 1, T));
    } else {
      F2_TRY(f2_shard_read(in + b * (T + 1), s, w.start, T + 1));
    }
  }
  return F2_OK;
}

int64_t f2_loader_eval_windows(const f2_loader *l) { return l ? l->eval_windows : 0; }

/* Evaluation window w of a shard of n tokens scores targets at positions s+1 .. min(s+T, n-1),
 * s = w*T; it reads from a = max(0, min(s, n-1-T)) so that the row stays full when it can. */
static int fill_eval_row(int32_t *in, int32_t *tg, int64_t *scored, const f2_shard *s, int64_t n, int64_t w, int64_t T,
                         int32_t pad) {
  int64_t start = w * T, a = n - 1 - T < start ? n - 1 - T : start;
  if (a < 0) a = 0;
  int64_t n_in = n - a < T ? n - a : T, n_tg = n - a - 1 < T ? n - a - 1 : T;   /* inputs from a, targets from a+1 */
  F2_TRY(f2_shard_read(in, s, a, n_in));
  F2_TRY(f2_shard_read(tg, s, a + 1, n_tg));
  for (int64_t j = n_in; j < T; j++) in[j] = pad;
  for (int64_t j = 0; j < T; j++) {
    if (j >= n_tg || a + j < start) tg[j] = -1;   /* past the end, or scored by the window before */
    else ++*scored;
  }
  return F2_OK;
}

int f2_loader_eval_batch(f2_tensor *inputs, f2_tensor *targets, int64_t *scored, const f2_loader *l, int64_t first_window) {
  if (!l) return F2_FAIL(F2_ERR_ARG, "f2_loader_eval_batch: loader is NULL");
  if (first_window < 0) return F2_FAIL(F2_ERR_ARG, "loader: first_window %lld must be >= 0", (long long)first_window);
  int64_t T = l->seq_len, count = 0;
  F2_TRY(check_rows("inputs", inputs, T));
  F2_TRY(check_rows("targets", targets, T));
  if (targets->shape[0] != inputs->shape[0])
    return F2_FAIL(F2_ERR_ARG, "loader: inputs have %lld rows, targets %lld", (long long)inputs->shape[0], (long long)targets->shape[0]);
  int32_t *in = inputs->data, *tg = targets->data;
  int32_t pad = 0;
  if (l->shard_count > 0) {
    f2_shard_info info;
    f2_shard_get_info(&info, l->shards[0].shard);
    pad = info.eos_id;
  }
  int32_t si = 0;
  for (int64_t b = 0; b < inputs->shape[0]; b++) {
    int64_t w = first_window + b;
    if (w >= l->eval_windows) {
      for (int64_t j = 0; j < T; j++) in[b * T + j] = pad, tg[b * T + j] = -1;
      continue;
    }
    while (si + 1 < l->shard_count && l->shards[si + 1].evals_before <= w) si++;
    const loader_shard *ls = &l->shards[si];
    F2_TRY(fill_eval_row(in + b * T, tg + b * T, &count, ls->shard, ls->tokens, w - ls->evals_before, T, pad));
  }
  if (scored) *scored = count;
  return F2_OK;
}
