/* test_gpu_gemm_cache.c — the GEMM algorithm choice (kernels/matmul.cu): the first call of a problem
 * times cuBLASLt's candidates and records the fastest in the cache file (F2_GEMM_CACHE); a second
 * process reads it back and gets the same bits. On fresh random inputs (seed printed):
 *   - products right against the CPU after the timing (bf16 and f32 inputs, batched, and out += a @ b
 *     with out as C, where the timed calls must not accumulate into out);
 *   - the file holds one line per problem timed, none added by repeating the calls;
 *   - a second process (this program, --again) with a malformed line added for this card: same bits
 *     for every product, nothing appended, the malformed line reported on stderr and skipped;
 *   - F2_GEMM_TUNE=0 in a third process: right products, nothing appended.
 * Exit 77 without a GPU. */
#include <string.h>
#include <unistd.h>

#include "f2test.h"

enum { kProducts = 4 };

/* Product i of the fixed list from inputs drawn with seed: out (a new GPU tensor) and, when want is
 * given, the CPU's result for the same inputs. */
static f2_tensor *product(int i, uint64_t seed, f2_tensor **want) {
  static const struct {
    int64_t batch, m, k, n;
    int32_t in, out;
    int ta, tb, accumulate;
  } p[kProducts] = {
      {0, 300, 200, 500, F2_BF16, F2_F32, 0, 0, 0},
      {0, 257, 96, 130, F2_BF16, F2_BF16, 0, 1, 0},
      {3, 64, 80, 48, F2_F32, F2_F32, 1, 0, 0},
      {0, 200, 333, 120, F2_BF16, F2_F32, 0, 0, 1},   /* out = a @ b + out */
  };
  int64_t as[3] = {p[i].batch, p[i].ta ? p[i].k : p[i].m, p[i].ta ? p[i].m : p[i].k};
  int64_t bs[3] = {p[i].batch, p[i].tb ? p[i].n : p[i].k, p[i].tb ? p[i].k : p[i].n};
  int64_t os[3] = {p[i].batch, p[i].m, p[i].n};
  const int nd = p[i].batch ? 3 : 2, off = p[i].batch ? 0 : 1;
  f2_tensor *a = f2t_tensor(p[i].in, F2_CPU, nd, as + off), *b = f2t_tensor(p[i].in, F2_CPU, nd, bs + off);
  f2_tensor *o = f2t_tensor(p[i].out, F2_CPU, nd, os + off);
  CHECK_OK(f2_rand_normal(a, seed + 10 * i, 0, 1));
  CHECK_OK(f2_rand_normal(b, seed + 10 * i + 1, 0, 1));
  CHECK_OK(f2_rand_normal(o, seed + 10 * i + 2, 0, 1));
  f2_tensor *ga = f2t_copy_as(a, a->dtype, F2_CUDA), *gb = f2t_copy_as(b, b->dtype, F2_CUDA);
  f2_tensor *go = f2t_copy_as(o, o->dtype, F2_CUDA);
  const float beta = p[i].accumulate ? 1.0f : 0.0f;
  CHECK_OK(f2_matmul(go, ga, gb, p[i].ta, p[i].tb, 1.0f, beta));
  if (want) {
    CHECK_OK(f2_matmul(o, a, b, p[i].ta, p[i].tb, 1.0f, beta));
    *want = o;
  } else {
    f2_tensor_free(o);
  }
  f2_tensor *all[] = {a, b, ga, gb};
  for (int j = 0; j < 4; j++) f2_tensor_free(all[j]);
  return go;
}

/* got (GPU) vs want (CPU): |got - want| <= tol max |want| for every element. */
static void compare(int i, const f2_tensor *got, const f2_tensor *want) {
  f2_tensor *g = f2t_copy_as(got, F2_F32, F2_CPU), *w = f2t_copy_as(want, F2_F32, F2_CPU);
  const float *gv = g->data, *wv = w->data;
  int64_t n = f2_tensor_numel(w), bad = 0;
  double max_want = 0;
  for (int64_t j = 0; j < n; j++) max_want = fmax(max_want, fabs(wv[j]));
  const double tol = (got->dtype == F2_BF16 || i != 2 ? 1e-2 : 1e-5) * max_want;
  for (int64_t j = 0; j < n; j++) bad += !(fabs((double)gv[j] - wv[j]) <= tol);
  CHECK(bad == 0, "product %d: %lld of %lld elements off by more than %.3g", i, (long long)bad, (long long)n, tol);
  f2_tensor_free(g);
  f2_tensor_free(w);
}

static int count_lines(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  int n = 0, c;
  while ((c = fgetc(f)) != EOF) n += c == '\n';
  fclose(f);
  return n;
}

static void save_bytes(const char *dir, int i, const f2_tensor *t) {
  char path[512];
  snprintf(path, sizeof path, "%s/out%d.bin", dir, i);
  f2_tensor *h = f2t_copy_as(t, t->dtype, F2_CPU);
  FILE *f = fopen(path, "wb");
  CHECK(f && fwrite(h->data, 1, f2_tensor_nbytes(h), f) == f2_tensor_nbytes(h), "writing %s", path);
  if (f) fclose(f);
  f2_tensor_free(h);
}

static int same_bytes(const char *dir, int i, const f2_tensor *t) {
  char path[512];
  snprintf(path, sizeof path, "%s/out%d.bin", dir, i);
  f2_tensor *h = f2t_copy_as(t, t->dtype, F2_CPU);
  size_t n = f2_tensor_nbytes(h);
  unsigned char *buf = malloc(n);
  FILE *f = fopen(path, "rb");
  int same = f && buf && fread(buf, 1, n, f) == n && memcmp(buf, h->data, n) == 0;
  if (f) fclose(f);
  free(buf);
  f2_tensor_free(h);
  return same;
}

/* The second process: the recorded choices give the same bits; nothing is appended. */
static int again(const char *dir, uint64_t seed, const char *cache) {
  const int lines = count_lines(cache);
  for (int i = 0; i < kProducts; i++) {
    f2_tensor *got = product(i, seed, NULL);
    CHECK(same_bytes(dir, i, got), "product %d: not the first process's bits with its recorded algorithm", i);
    f2_tensor_free(got);
  }
  CHECK(count_lines(cache) == lines, "the second process appended %d lines", count_lines(cache) - lines);
  return f2t_done();
}

/* The third: no timing, no file. */
static int untuned(uint64_t seed, const char *cache) {
  const int lines = count_lines(cache);
  for (int i = 0; i < kProducts; i++) {
    f2_tensor *want, *got = product(i, seed, &want);
    compare(i, got, want);
    f2_tensor_free(got);
    f2_tensor_free(want);
  }
  CHECK(count_lines(cache) == lines, "F2_GEMM_TUNE=0 appended %d lines", count_lines(cache) - lines);
  return f2t_done();
}

int main(int argc, char **argv) {
  f2t_require_gpu();
  if (argc == 5 && !strcmp(argv[1], "--again")) return again(argv[2], strtoull(argv[3], NULL, 10), argv[4]);
  if (argc == 4 && !strcmp(argv[1], "--untuned")) return untuned(strtoull(argv[2], NULL, 10), argv[3]);
  const uint64_t seed = f2t_seed();
  char dir[] = "/tmp/f2gemmXXXXXX", cache[512], cmd[2048];
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  snprintf(cache, sizeof cache, "%s/sub/gemm-algos.tsv", dir);   /* the directory is created on demand */
  setenv("F2_GEMM_CACHE", cache, 1);
  unsetenv("F2_GEMM_TUNE");

  for (int i = 0; i < kProducts; i++) {
    f2_tensor *want, *got = product(i, seed, &want);
    compare(i, got, want);
    save_bytes(dir, i, got);
    f2_tensor_free(got);
    f2_tensor_free(want);
  }
  const int lines = count_lines(cache);
  CHECK(lines >= 1 && lines <= kProducts, "%d lines in %s after %d products", lines, cache, kProducts);
  for (int i = 0; i < kProducts; i++) f2_tensor_free(product(i, seed, NULL));   /* the same problems again */
  CHECK(count_lines(cache) == lines, "repeating the products appended %d lines", count_lines(cache) - lines);

  /* A malformed line for this card (the prefix of a recorded line: card and library version). */
  FILE *f = fopen(cache, "r");
  char line[2048] = "", *tab = NULL;
  if (f && fgets(line, sizeof line, f)) tab = strchr(line, '\t');
  if (tab) tab = strchr(tab + 1, '\t');
  CHECK(tab != NULL, "no card prefix in the first line of %s: \"%s\"", cache, line);
  if (f) fclose(f);
  if (tab) {
    tab[1] = 0;
    f = fopen(cache, "a");
    if (f) {
      fprintf(f, "%szz\t3\n", line);
      fclose(f);
    }
  }
  const int lines2 = count_lines(cache);
  snprintf(cmd, sizeof cmd, "'%s' --again '%s' %llu '%s' 2>'%s/stderr.txt'", argv[0], dir, (unsigned long long)seed,
           cache, dir);
  CHECK(system(cmd) == 0, "the second process failed: %s", cmd);
  char err_path[600], err[1024] = "";
  snprintf(err_path, sizeof err_path, "%s/stderr.txt", dir);
  f = fopen(err_path, "r");
  if (f) {
    size_t n = fread(err, 1, sizeof err - 1, f);
    err[n] = 0;
    fclose(f);
  }
  CHECK(strstr(err, "malformed") != NULL, "the malformed cache line was not reported: \"%s\"", err);
  CHECK(count_lines(cache) == lines2, "the second process appended lines");
  snprintf(cmd, sizeof cmd, "F2_GEMM_TUNE=0 '%s' --untuned %llu '%s'", argv[0], (unsigned long long)seed, cache);
  CHECK(system(cmd) == 0, "the untuned process failed: %s", cmd);

  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  return f2t_done();
}
