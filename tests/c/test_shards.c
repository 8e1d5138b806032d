/* test_shards.c — token shards and the loader: write/read round trips in both widths, damaged files
 * giving clear errors, the hash against a byte-wise reference written from docs/data.md, loader
 * determinism (the resume property), source mixing by weight, windows inside shards, and the
 * evaluation walk scoring every token exactly once. Fresh random shards each run. */
#include "f2test.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t rng_state;
static uint64_t next_u64(void) {   /* SplitMix64 */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static int64_t rand_below(int64_t n) { return (int64_t)(next_u64() % (uint64_t)n); }

static char dir[256];
static const char *tmp_path(const char *name) {
  static char buf[8][512];
  static int k;
  k = (k + 1) % 8;
  snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
  return buf[k];
}

/* ---------------------------------------------------------------- the hash, from the docs' words */
static uint64_t ref_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static uint64_t ref_hash(const uint8_t *p, size_t n, uint64_t seed) {
  uint64_t h = ref_mix(seed ^ 0x6A09E667F3BCC909ull);
  size_t words = n / 8 + 1;   /* every 8 bytes, then the zero-padded rest (possibly all padding) */
  for (size_t w = 0; w < words; w++) {
    uint64_t v = 0;
    for (size_t b = 0; b < 8; b++) v |= (uint64_t)(w * 8 + b < n ? p[w * 8 + b] : 0) << (8 * b);
    h ^= ref_mix(v);
    h = ((h << 27) | (h >> 37)) * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  }
  return ref_mix(h ^ n);
}

static void test_hash(void) {
  uint8_t buf[64];
  for (int i = 0; i < 64; i++) buf[i] = (uint8_t)next_u64();
  int all_match = 1;
  for (size_t n = 0; n <= 64; n++)
    for (uint64_t seed = 0; seed < 3; seed++) all_match &= f2_hash64(buf, n, seed) == ref_hash(buf, n, seed);
  CHECK(all_match, "f2_hash64 differs from the byte-wise reference");
  CHECK(f2_hash64(buf, 10, 0) != f2_hash64(buf, 10, 1), "seed changes the hash");
  uint8_t zeros[16] = {0};
  CHECK(f2_hash64(zeros, 8, 0) != f2_hash64(zeros, 9, 0), "trailing zero bytes change the hash (length counted)");
  uint8_t copy[64];
  memcpy(copy, buf, 64);
  copy[37] ^= 1;
  CHECK(f2_hash64(buf, 64, 0) != f2_hash64(copy, 64, 0), "one flipped bit changes the hash");
}

/* ---------------------------------------------------------------- shards */

/* Writes docs random documents and returns the expected token stream (doc tokens, EOS each). */
static int32_t *write_shard(const char *path, int32_t width, int32_t vocab, int32_t eos, uint64_t tok_id, int32_t docs,
                            int32_t max_len, int64_t *count, f2_shard_info *info) {
  f2_shard_writer *w = f2_shard_writer_new(path, width, vocab, eos, tok_id);
  CHECK(w != NULL, "%s", f2_last_error());
  int32_t *all = malloc(sizeof(int32_t) * (size_t)docs * (size_t)(max_len + 1));
  int32_t *doc = malloc(sizeof(int32_t) * (size_t)max_len);
  int64_t n = 0;
  int ok = 1;
  for (int32_t d = 0; d < docs; d++) {
    int32_t len = (int32_t)rand_below(max_len + 1);   /* empty documents too */
    for (int32_t i = 0; i < len; i++) doc[i] = all[n++] = (int32_t)rand_below(vocab);
    all[n++] = eos;
    ok &= f2_shard_writer_add(w, doc, len) == F2_OK;
  }
  CHECK(ok, "writing '%s': %s", path, f2_last_error());
  CHECK_OK(f2_shard_writer_finish(info, w));
  f2_shard_writer_free(w);
  free(doc);
  *count = n;
  return all;
}

static unsigned char *slurp(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  *size = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc(*size + 1);
  if (fread(b, 1, *size, f) != *size) *size = 0;
  fclose(f);
  return b;
}

static void spit(const char *path, const unsigned char *b, size_t size) {
  FILE *f = fopen(path, "wb");
  fwrite(b, 1, size, f);
  fclose(f);
}

static uint64_t le(const unsigned char *p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

static void test_round_trip(int32_t width, int32_t vocab) {
  const char *path = tmp_path(width == 2 ? "rt16.bin" : "rt32.bin");
  int32_t eos = (int32_t)rand_below(vocab);
  uint64_t tok_id = next_u64();
  int64_t n;
  f2_shard_info info;
  int32_t docs = 50 + (int32_t)rand_below(50);
  int32_t *want = write_shard(path, width, vocab, eos, tok_id, docs, 3000, &n, &info);
  CHECK(access(tmp_path(width == 2 ? "rt16.bin.tmp" : "rt32.bin.tmp"), F_OK) != 0, "the .tmp file is gone after finish");
  CHECK(info.token_count == n && info.document_count == docs, "info counts %lld/%lld vs %lld/%d",
        (long long)info.token_count, (long long)info.document_count, (long long)n, docs);

  /* The bytes on disk, read without the library: header fields little-endian at their offsets. */
  size_t size;
  unsigned char *raw = slurp(path, &size);
  CHECK(size == 256 + (size_t)n * (size_t)width, "file size %zu", size);
  CHECK(memcmp(raw, "F2TOKENS", 8) == 0, "magic");
  CHECK(le(raw + 8, 4) == 1 && le(raw + 12, 4) == (uint64_t)width && le(raw + 16, 8) == (uint64_t)n &&
            le(raw + 24, 8) == (uint64_t)docs && le(raw + 32, 4) == (uint64_t)vocab && le(raw + 36, 4) == (uint64_t)eos &&
            le(raw + 40, 8) == tok_id,
        "header fields");
  CHECK(le(raw + 48, 8) == ref_hash(raw + 256, size - 256, 0), "content hash = hash of the token bytes");
  CHECK(le(raw + 56, 8) == ref_hash(raw, 56, 0), "header check = hash of the first 56 bytes");
  int raw_ok = 1;
  for (int64_t i = 0; i < n; i++) raw_ok &= le(raw + 256 + i * width, width) == (uint64_t)want[i];
  CHECK(raw_ok, "token bytes on disk (width %d)", width);
  free(raw);

  f2_shard *s = f2_shard_open(path);
  CHECK(s != NULL, "%s", f2_last_error());
  if (s) {
    f2_shard_info got;
    CHECK_OK(f2_shard_get_info(&got, s));
    CHECK(got.token_count == n && got.token_bytes == width && got.vocab_size == vocab && got.eos_id == eos &&
              got.tokenizer_id == tok_id && got.content_hash == info.content_hash && got.document_count == docs,
          "info after open");
    int32_t *back = malloc(sizeof(int32_t) * (size_t)n);
    CHECK_OK(f2_shard_read(back, s, 0, n));
    CHECK(memcmp(back, want, sizeof(int32_t) * (size_t)n) == 0, "read back all tokens");
    int64_t a = rand_below(n), c = rand_below(n - a + 1);
    CHECK_OK(f2_shard_read(back, s, a, c));
    CHECK(memcmp(back, want + a, sizeof(int32_t) * (size_t)c) == 0, "read a slice [%lld, +%lld)", (long long)a, (long long)c);
    CHECK(f2_shard_read(back, s, n - 3, 4) == F2_ERR_ARG, "reading past the end is refused");
    CHECK_OK(f2_shard_verify(s));
    free(back);
    f2_shard_close(s);
  }
  free(want);
}

/* Opening must fail, the message naming the file and containing `expect`. */
static void expect_open_error(const char *path, const char *expect) {
  f2_shard *s = f2_shard_open(path);
  CHECK(s == NULL, "opening damaged '%s' should fail", path);
  f2_shard_close(s);
  CHECK(strstr(f2_last_error(), path) && strstr(f2_last_error(), expect), "message '%s' should name '%s' and say '%s'",
        f2_last_error(), path, expect);
}

static void test_damaged(void) {
  const char *good = tmp_path("good.bin");
  int64_t n;
  f2_shard_info info;
  free(write_shard(good, 2, 500, 0, 7, 20, 200, &n, &info));
  size_t size;
  unsigned char *raw = slurp(good, &size);

  spit(tmp_path("trunc.bin"), raw, size - 2);
  expect_open_error(tmp_path("trunc.bin"), "truncated");
  spit(tmp_path("odd.bin"), raw, size - 1);
  expect_open_error(tmp_path("odd.bin"), "bytes after the header");
  spit(tmp_path("tiny.bin"), raw, 100);
  expect_open_error(tmp_path("tiny.bin"), "too small");
  unsigned char *bad = malloc(size);
  memcpy(bad, raw, size);
  bad[1] = 'X';
  spit(tmp_path("magic.bin"), bad, size);
  expect_open_error(tmp_path("magic.bin"), "magic");
  memcpy(bad, raw, size);
  bad[8] = 2;
  spit(tmp_path("version.bin"), bad, size);
  expect_open_error(tmp_path("version.bin"), "version 2");
  memcpy(bad, raw, size);
  bad[16 + rand_below(8)] ^= (unsigned char)(1 + rand_below(255));   /* token count damaged */
  spit(tmp_path("header.bin"), bad, size);
  expect_open_error(tmp_path("header.bin"), "header check");
  expect_open_error(tmp_path("missing.bin"), "cannot open");

  memcpy(bad, raw, size);
  bad[256 + rand_below((int64_t)size - 256)] ^= 0x40;   /* a token damaged: only verify can see it */
  spit(tmp_path("content.bin"), bad, size);
  f2_shard *s = f2_shard_open(tmp_path("content.bin"));
  CHECK(s != NULL, "a shard with damaged tokens still opens: %s", f2_last_error());
  if (s) {
    CHECK(f2_shard_verify(s) == F2_ERR_FORMAT && strstr(f2_last_error(), "content hash"), "verify: %s", f2_last_error());
    f2_shard_close(s);
  }
  free(bad);
  free(raw);

  /* Writer misuse. */
  CHECK(f2_shard_writer_new(tmp_path("w.bin"), 2, 70000, 0, 0) == NULL && strstr(f2_last_error(), "2-byte"),
        "vocab 70000 in 2 bytes: %s", f2_last_error());
  CHECK(f2_shard_writer_new(tmp_path("w.bin"), 3, 100, 0, 0) == NULL && strstr(f2_last_error(), "width"), "width 3");
  CHECK(f2_shard_writer_new(tmp_path("w.bin"), 0, 100, 100, 0) == NULL && strstr(f2_last_error(), "EOS"), "eos outside");
  CHECK(f2_shard_writer_new(tmp_path("nodir/w.bin"), 0, 100, 1, 0) == NULL && strstr(f2_last_error(), "nodir"),
        "unwritable path: %s", f2_last_error());
  f2_shard_writer *w = f2_shard_writer_new(tmp_path("w.bin"), 0, 100, 1, 0);
  int32_t toks[3] = {5, 100, 7};
  CHECK(f2_shard_writer_add(w, toks, 3) == F2_ERR_ARG && strstr(f2_last_error(), "token 100"), "%s", f2_last_error());
  CHECK(access(tmp_path("w.bin.tmp"), F_OK) == 0, "unfinished writer has its .tmp");
  f2_shard_writer_free(w);
  CHECK(access(tmp_path("w.bin.tmp"), F_OK) != 0 && access(tmp_path("w.bin"), F_OK) != 0,
        "freeing an unfinished writer leaves no file");
  w = f2_shard_writer_new(tmp_path("w4.bin"), 0, 70000, 1, 0);
  CHECK_OK(f2_shard_writer_add(w, toks, 2));
  f2_shard_info wi;
  CHECK_OK(f2_shard_writer_finish(&wi, w));
  CHECK(wi.token_bytes == 4 && wi.token_count == 3, "width 0 picks 4 bytes for a 70000 vocab");
  CHECK(f2_shard_writer_add(w, toks, 1) == F2_ERR_ARG, "add after finish is refused");
  f2_shard_writer_free(w);
}

/* ---------------------------------------------------------------- loader */

typedef struct {
  const char *path;
  int32_t *tokens;
  int64_t n;
} shard_t;

static f2_tensor *i32(int64_t rows, int64_t cols) {
  int64_t shape[2] = {rows, cols};
  return f2_tensor_new(F2_I32, F2_CPU, 2, shape);
}

static void test_loader(int32_t width) {
  const int32_t T = 16 + (int32_t)rand_below(48), vocab = width == 2 ? 3000 : 90000;
  const uint64_t tok_id = 0xABCDEF;
  /* Source 0: three shards, the middle one too short for a window; source 1: one shard;
   * source 2: weight 0; source 3: two shards. */
  enum { NSRC = 4 };
  const int32_t shard_counts[NSRC] = {3, 1, 1, 2};
  const double weights[NSRC] = {1.0, 3.0, 0.0, 6.0};
  shard_t shards[NSRC][3];
  const char *paths[NSRC][3];
  f2_loader *l = f2_loader_new(T, 1234), *l2 = f2_loader_new(T, 1234), *other = f2_loader_new(T, 4321);
  for (int s = 0; s < NSRC; s++) {
    for (int k = 0; k < shard_counts[s]; k++) {
      char name[64];
      snprintf(name, sizeof name, "src%d_%d_w%d.bin", s, k, width);
      shard_t *sh = &shards[s][k];
      sh->path = paths[s][k] = strdup(tmp_path(name));
      f2_shard_info info;
      int docs = (s == 0 && k == 1) ? 1 : 5 + (int)rand_below(30);
      int32_t max_len = (s == 0 && k == 1) ? T / 2 : 400;
      sh->tokens = write_shard(sh->path, width, vocab, 0, tok_id, docs, max_len, &sh->n, &info);
    }
    CHECK_OK(f2_loader_add_source(l, weights[s], paths[s], shard_counts[s]));
    CHECK_OK(f2_loader_add_source(l2, weights[s], paths[s], shard_counts[s]));
    CHECK_OK(f2_loader_add_source(other, weights[s], paths[s], shard_counts[s]));
  }

  /* Determinism and the resume property: two loaders, same (seed, step, sample) -> same rows;
   * a batch starting at sample k equals rows k.. of a batch starting at 0. */
  const int64_t B = 8;
  f2_tensor *a = i32(B, T), *at = i32(B, T), *b = i32(B, T), *bt = i32(B, T), *whole = i32(B, T + 1), *off = i32(B, T + 1);
  int same = 1, shifted = 1, differs = 0, content = 1;
  for (int trial = 0; trial < 20; trial++) {
    int64_t step = rand_below(1000000), first = rand_below(100);
    CHECK_OK(f2_loader_batch(a, at, l, step, first));
    CHECK_OK(f2_loader_batch(b, bt, l2, step, first));
    same &= memcmp(a->data, b->data, (size_t)(B * T) * 4) == 0 && memcmp(at->data, bt->data, (size_t)(B * T) * 4) == 0;
    CHECK_OK(f2_loader_batch(whole, NULL, l, step, first));
    CHECK_OK(f2_loader_batch(off, NULL, l2, step, first + 3));
    shifted &= memcmp((int32_t *)whole->data + 3 * (T + 1), off->data, (size_t)((B - 3) * (T + 1)) * 4) == 0;
    CHECK_OK(f2_loader_batch(b, bt, other, step, first));
    differs += memcmp(a->data, b->data, (size_t)(B * T) * 4) != 0;
    /* Rows are the windows the loader reports, read from the tokens we wrote. */
    for (int64_t r = 0; r < B; r++) {
      f2_window w;
      CHECK_OK(f2_loader_window(&w, l, step, first + r));
      const shard_t *sh = &shards[w.source][w.shard];
      const int32_t *in = (int32_t *)a->data + r * T, *tg = (int32_t *)at->data + r * T, *wh = (int32_t *)whole->data + r * (T + 1);
      for (int32_t j = 0; j < T; j++)
        content &= in[j] == sh->tokens[w.start + j] && tg[j] == sh->tokens[w.start + j + 1] && wh[j] == in[j];
      content &= wh[T] == tg[T - 1];
    }
  }
  CHECK(same, "two loaders with one seed give the same batches");
  CHECK(shifted, "sample k of a step does not depend on where the batch starts");
  CHECK(differs >= 19, "another seed gives other batches (%d of 20 differ)", differs);
  CHECK(content, "rows hold the tokens of their windows, targets shifted by one");

  /* Mixing and placement: source frequencies follow the weights, shard frequencies follow their
   * window starts, windows never cross a shard's end. */
  const int64_t N = 200000;
  int64_t src_hits[NSRC] = {0}, shard_hits[NSRC][3] = {{0}};
  int inside = 1;
  for (int64_t i = 0; i < N; i++) {
    f2_window w;
    inside &= f2_loader_window(&w, l, i / 64, i % 64) == F2_OK;
    src_hits[w.source]++;
    shard_hits[w.source][w.shard]++;
    inside &= w.start >= 0 && w.start + T + 1 <= shards[w.source][w.shard].n;
  }
  CHECK(inside, "every window lies inside its shard");
  double total_w = 0;
  for (int s = 0; s < NSRC; s++) total_w += weights[s];
  for (int s = 0; s < NSRC; s++) {
    double p = weights[s] / total_w, mean = N * p, sd = sqrt(N * p * (1 - p));
    CHECK(fabs((double)src_hits[s] - mean) <= 5 * sd + (p == 0 ? 0 : 1), "source %d drawn %lld times, expected %.0f +- %.0f", s,
          (long long)src_hits[s], mean, sd);
    int64_t starts = 0;
    for (int k = 0; k < shard_counts[s]; k++) starts += shards[s][k].n > T ? shards[s][k].n - T : 0;
    for (int k = 0; k < shard_counts[s] && src_hits[s] > 0; k++) {
      int64_t sk = shards[s][k].n > T ? shards[s][k].n - T : 0;
      double q = (double)sk / (double)starts, m = src_hits[s] * q, d = sqrt(src_hits[s] * q * (1 - q));
      CHECK(fabs((double)shard_hits[s][k] - m) <= 5 * d + (q == 0 ? 0 : 1), "source %d shard %d drawn %lld, expected %.0f +- %.0f",
            s, k, (long long)shard_hits[s][k], m, d);
    }
  }

  /* Misuse. */
  f2_tensor *wrong = i32(B, T + 2);
  CHECK(f2_loader_batch(wrong, NULL, l, 0, 0) == F2_ERR_ARG && strstr(f2_last_error(), "inputs"), "%s", f2_last_error());
  CHECK(f2_loader_batch(a, wrong, l, 0, 0) == F2_ERR_ARG && strstr(f2_last_error(), "targets"), "%s", f2_last_error());
  CHECK(f2_loader_batch(a, at, l, -1, 0) == F2_ERR_ARG, "negative step");
  CHECK(f2_loader_add_source(l, -1, paths[1], 1) == F2_ERR_ARG && strstr(f2_last_error(), "weight"), "negative weight");
  CHECK(f2_loader_add_source(l, 1, &paths[0][1], 1) == F2_ERR_ARG && strstr(f2_last_error(), "seq_len + 1"),
        "a source of short shards only: %s", f2_last_error());
  const char *foreign = tmp_path("foreign.bin");
  int64_t fn;
  f2_shard_info fi;
  free(write_shard(foreign, width, vocab, 0, tok_id + 1, 30, 100, &fn, &fi));
  CHECK(f2_loader_add_source(l, 1, &foreign, 1) == F2_ERR_ARG && strstr(f2_last_error(), "share a tokenizer"),
        "a shard from another tokenizer: %s", f2_last_error());
  CHECK(f2_loader_window(&(f2_window){0}, l, 5, 5) == F2_OK, "the loader still works after refused sources");
  f2_tensor_free(wrong);

  f2_tensor_free(a), f2_tensor_free(at), f2_tensor_free(b), f2_tensor_free(bt), f2_tensor_free(whole), f2_tensor_free(off);
  f2_loader_free(l), f2_loader_free(l2), f2_loader_free(other);
  for (int s = 0; s < NSRC; s++)
    for (int k = 0; k < shard_counts[s]; k++) free(shards[s][k].tokens), free((void *)paths[s][k]);
}

/* The evaluation walk over shards of random sizes (some shorter than one window, one of 1 token). */
static void test_eval(void) {
  const int32_t T = 8 + (int32_t)rand_below(40);
  enum { NS = 5 };
  shard_t sh[NS];
  const char *paths[NS];
  f2_loader *l = f2_loader_new(T, 99);
  int64_t want_windows = 0, want_scored = 0;
  for (int k = 0; k < NS; k++) {
    char name[32];
    snprintf(name, sizeof name, "eval%d.bin", k);
    sh[k].path = paths[k] = strdup(tmp_path(name));
    f2_shard_info info;
    int docs = k == 1 ? 1 : k == 3 ? 2 : 3 + (int)rand_below(10);
    int32_t max_len = k == 1 ? 0 : k == 3 ? T / 3 : 300;   /* shard 1: one EOS; shard 3: shorter than T+1 */
    sh[k].tokens = write_shard(paths[k], 2, 1000, 999, 5, docs, max_len, &sh[k].n, &info);
    if (sh[k].n >= 2) want_windows += (sh[k].n - 1 + T - 1) / T, want_scored += sh[k].n - 1;
  }
  CHECK_OK(f2_loader_add_source(l, 1.0, paths, 2));
  CHECK_OK(f2_loader_add_source(l, 0.0, paths + 2, NS - 2));
  CHECK(f2_loader_eval_windows(l) == want_windows, "eval windows %lld, expected %lld", (long long)f2_loader_eval_windows(l),
        (long long)want_windows);

  /* Walk in batches of B: the scored targets, concatenated, must be every shard's tokens 1..n-1 in
   * order, each scored target's input its preceding token, and rows contiguous (input j+1 = target j). */
  const int64_t B = 3;
  f2_tensor *in = i32(B, T), *tg = i32(B, T);
  int k = 0;
  int64_t pos = 1, scored_total = 0;
  int order_ok = 1, shift_ok = 1;
  for (int64_t first = 0; first < want_windows + B; first += B) {
    int64_t scored;
    CHECK_OK(f2_loader_eval_batch(in, tg, &scored, l, first));
    scored_total += scored;
    const int32_t *ip = in->data, *tp = tg->data;
    for (int64_t r = 0; r < B; r++)
      for (int32_t j = 0; j < T; j++) {
        int32_t x = ip[r * T + j], y = tp[r * T + j];
        if (j + 1 < T && y != -1) shift_ok &= ip[r * T + j + 1] == y;
        if (y == -1) continue;
        while (k < NS && pos >= sh[k].n) k++, pos = 1;
        if (k >= NS) {
          order_ok = 0;
          continue;
        }
        order_ok &= y == sh[k].tokens[pos] && x == sh[k].tokens[pos - 1];
        pos++;
      }
  }
  while (k < NS && pos >= sh[k].n) k++, pos = 1;
  CHECK(order_ok && k == NS, "scored targets walk every shard's tokens exactly once, in order (stopped at shard %d)", k);
  CHECK(shift_ok, "within a row, input j+1 is target j");
  CHECK(scored_total == want_scored, "scored %lld targets, expected %lld", (long long)scored_total, (long long)want_scored);
  CHECK_OK(f2_loader_eval_batch(in, tg, NULL, l, want_windows + 5));
  int padded = 1;
  for (int64_t i = 0; i < B * T; i++) padded &= ((int32_t *)tg->data)[i] == -1 && ((int32_t *)in->data)[i] == 999;
  CHECK(padded, "rows past the last window: EOS inputs, ignored targets");
  f2_tensor_free(in), f2_tensor_free(tg);
  f2_loader_free(l);
  for (int i = 0; i < NS; i++) free(sh[i].tokens), free((void *)paths[i]);
}

int main(void) {
  rng_state = f2t_seed();
  snprintf(dir, sizeof dir, "/tmp/f2_test_shards_XXXXXX");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  test_hash();
  test_round_trip(2, 1 + (int32_t)rand_below(65536));
  test_round_trip(4, 65537 + (int32_t)rand_below(200000));
  test_damaged();
  test_loader(2);
  test_loader(4);
  test_eval();
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  return f2t_done();
}
