/* tokenize_files.c — text and JSONL files to one token shard, tokenized by several threads. Documents
 * are read in order into batches, each batch is encoded in parallel (threads take documents from a
 * shared counter), then written in document order, so the shard is the same for any thread count. */
#include "f2_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { BATCH_BYTES = 8 << 20, MAX_THREADS = 256 };

/* ---------------------------------------------------------------- growable buffers */

typedef struct { char *p; size_t n, cap; } bytes_buf;

static int reserve(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return F2_OK;
  size_t c = *cap ? *cap : 1024;
  while (c < need) c *= 2;
  void *q = realloc(*p, c * elem);
  if (!q) return F2_FAIL(F2_ERR_MEM, "out of host memory (%zu bytes)", c * elem);
  *p = q;
  *cap = c;
  return F2_OK;
}
static int bytes_push(bytes_buf *b, const char *s, size_t n) {
  F2_TRY(reserve((void **)&b->p, &b->cap, b->n + n, 1));
  memcpy(b->p + b->n, s, n);
  b->n += n;
  return F2_OK;
}

/* ---------------------------------------------------------------- the "text" field of a JSON line */

typedef struct {
  const char *s, *end;
  const char *file;
  int64_t line;
} json_cursor;

static int json_error(const json_cursor *c, const char *what) {
  return F2_FAIL(F2_ERR_FORMAT, "%s:%lld: %s (JSONL wants one object per line with a string field \"text\")", c->file,
                 (long long)c->line, what);
}

static void skip_ws(json_cursor *c) {
  while (c->s < c->end && (*c->s == ' ' || *c->s == '\t' || *c->s == '\r' || *c->s == '\n')) c->s++;
}

static int hex4(const char *s, uint32_t *out) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    char ch = s[i];
    int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
    if (d < 0) return -1;
    v = v << 4 | (uint32_t)d;
  }
  *out = v;
  return 0;
}

static size_t put_utf8(char *o, uint32_t cp) {
  if (cp < 0x80) return o[0] = (char)cp, 1;
  if (cp < 0x800) return o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3F)), 2;
  if (cp < 0x10000) return o[0] = (char)(0xE0 | cp >> 12), o[1] = (char)(0x80 | (cp >> 6 & 0x3F)), o[2] = (char)(0x80 | (cp & 0x3F)), 3;
  o[0] = (char)(0xF0 | cp >> 18), o[1] = (char)(0x80 | (cp >> 12 & 0x3F)), o[2] = (char)(0x80 | (cp >> 6 & 0x3F));
  o[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Reads the string at the cursor (on its opening quote), appending the decoded bytes to out when
 * out is not NULL. Bytes outside escapes are copied as they are (invalid UTF-8 included: the
 * tokenizer is byte-level); a lone surrogate escape becomes U+FFFD. */
static int json_string(json_cursor *c, bytes_buf *out) {
  c->s++;
  for (;;) {
    const char *run = c->s;
    while (c->s < c->end && *c->s != '"' && *c->s != '\\') c->s++;
    if (out) F2_TRY(bytes_push(out, run, (size_t)(c->s - run)));
    if (c->s >= c->end) return json_error(c, "unterminated string");
    if (*c->s++ == '"') return F2_OK;
    if (c->s >= c->end) return json_error(c, "unterminated escape");
    char e = *c->s++, ch;
    switch (e) {
      case '"': ch = '"'; break;
      case '\\': ch = '\\'; break;
      case '/': ch = '/'; break;
      case 'b': ch = '\b'; break;
      case 'f': ch = '\f'; break;
      case 'n': ch = '\n'; break;
      case 'r': ch = '\r'; break;
      case 't': ch = '\t'; break;
      case 'u': {
        uint32_t cp, lo;
        if (c->end - c->s < 4 || hex4(c->s, &cp)) return json_error(c, "bad \\u escape");
        c->s += 4;
        if (cp >= 0xD800 && cp < 0xDC00 && c->end - c->s >= 6 && c->s[0] == '\\' && c->s[1] == 'u' && !hex4(c->s + 2, &lo) &&
            lo >= 0xDC00 && lo < 0xE000) {
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          c->s += 6;
        } else if (cp >= 0xD800 && cp < 0xE000) {
          cp = 0xFFFD;
        }
        char u[4];
        if (out) F2_TRY(bytes_push(out, u, put_utf8(u, cp)));
        continue;
      }
      default: return json_error(c, "bad escape in a string");
    }
    if (out) F2_TRY(bytes_push(out, &ch, 1));
  }
}

/* Skips any JSON value (nested objects and arrays by depth; strings so that brackets inside them
 * don't count). Numbers and literals are not checked beyond their extent. */
static int json_skip(json_cursor *c) {
  int depth = 0;
  do {
    skip_ws(c);
    if (c->s >= c->end) return json_error(c, "unexpected end of line");
    char ch = *c->s;
    if (ch == '"') {
      F2_TRY(json_string(c, NULL));
    } else if (ch == '{' || ch == '[') {
      depth++, c->s++;
    } else if (ch == '}' || ch == ']') {
      if (--depth < 0) return json_error(c, "unbalanced brackets");
      c->s++;
    } else if (ch == ',' || ch == ':') {
      if (depth == 0) return json_error(c, "expected a value");
      c->s++;
    } else {
      const char *start = c->s;
      while (c->s < c->end && !strchr(",:{}[]\" \t\r\n", *c->s)) c->s++;
      if (c->s == start) return json_error(c, "unexpected character");
    }
  } while (depth > 0);
  return F2_OK;
}

/* The decoded "text" field of the object on this line, appended to out. */
static int json_text_field(json_cursor *c, bytes_buf *out, bytes_buf *key) {
  skip_ws(c);
  if (c->s >= c->end || *c->s++ != '{') return json_error(c, "not a JSON object");
  int found = 0;
  skip_ws(c);
  if (c->s < c->end && *c->s == '}') c->s++;
  else
    for (;;) {
      skip_ws(c);
      if (c->s >= c->end || *c->s != '"') return json_error(c, "expected a key");
      key->n = 0;
      F2_TRY(json_string(c, key));
      skip_ws(c);
      if (c->s >= c->end || *c->s++ != ':') return json_error(c, "expected ':' after a key");
      skip_ws(c);
      if (key->n == 4 && memcmp(key->p, "text", 4) == 0) {
        if (found) return json_error(c, "two \"text\" fields");
        if (c->s >= c->end || *c->s != '"') return json_error(c, "the \"text\" field is not a string");
        F2_TRY(json_string(c, out));
        found = 1;
      } else {
        F2_TRY(json_skip(c));
      }
      skip_ws(c);
      if (c->s < c->end && *c->s == ',') {
        c->s++;
        continue;
      }
      if (c->s < c->end && *c->s == '}') {
        c->s++;
        break;
      }
      return json_error(c, "expected ',' or '}'");
    }
  skip_ws(c);
  if (c->s != c->end) return json_error(c, "text after the object");
  if (!found) return json_error(c, "no \"text\" field");
  return F2_OK;
}

/* ---------------------------------------------------------------- reading documents in batches */

typedef struct {
  const char *const *paths;
  int32_t count, next_path;
  FILE *file;           /* the open JSONL file, if any */
  int64_t line;
  char *line_buf;
  size_t line_cap;
  bytes_buf key;
} doc_reader;

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

static int read_whole_file(bytes_buf *text, const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return F2_FAIL(F2_ERR_IO, "'%s': cannot open: %s", path, strerror(errno));
  char chunk[1 << 16];
  size_t n;
  int rc = F2_OK;
  while (rc == F2_OK && (n = fread(chunk, 1, sizeof chunk, f)) > 0) rc = bytes_push(text, chunk, n);
  if (rc == F2_OK && ferror(f)) rc = F2_FAIL(F2_ERR_IO, "'%s': read failed", path);
  fclose(f);
  return rc;
}

/* Appends the next document to text and returns 1, or returns 0 at the end of the inputs. */
static int next_document(doc_reader *r, bytes_buf *text, int *status) {
  *status = F2_OK;
  for (;;) {
    if (r->file) {
      ssize_t n = getline(&r->line_buf, &r->line_cap, r->file);
      if (n < 0) {
        int bad = ferror(r->file);
        fclose(r->file);
        r->file = NULL;
        if (bad) return (*status = F2_FAIL(F2_ERR_IO, "'%s': read failed", r->paths[r->next_path - 1])), 0;
        continue;
      }
      r->line++;
      json_cursor c = {r->line_buf, r->line_buf + n, r->paths[r->next_path - 1], r->line};
      skip_ws(&c);
      if (c.s == c.end) continue;   /* blank lines are no documents */
      if ((*status = json_text_field(&c, text, &r->key)) != F2_OK) return 0;
      return 1;
    }
    if (r->next_path >= r->count) return 0;
    const char *path = r->paths[r->next_path++];
    if (ends_with(path, ".jsonl")) {
      r->file = fopen(path, "rb");
      r->line = 0;
      if (!r->file) return (*status = F2_FAIL(F2_ERR_IO, "'%s': cannot open: %s", path, strerror(errno))), 0;
      continue;
    }
    if ((*status = read_whole_file(text, path)) != F2_OK) return 0;
    return 1;
  }
}

/* ---------------------------------------------------------------- parallel encoding */

typedef struct {
  int32_t worker;   /* whose ids buffer holds the document's ids */
  int64_t start, count;
} doc_ids;

typedef struct {
  const f2_tokenizer *tok;
  const char *text;
  const size_t *doc_start;   /* document d is text[doc_start[d] .. doc_start[d+1]) */
  doc_ids *result;           /* per document */
  int32_t docs;
  atomic_int next_doc;
  atomic_int failed;
  pthread_mutex_t lock;
  int error_code;
  char error[1024];
} encode_job;

typedef struct {
  encode_job *job;
  int32_t index;
  int32_t *ids;
  size_t n, cap;
} encode_worker;

/* Encodes into the worker's buffer, growing it when the text needs more ids than assumed. */
static int encode_one(encode_worker *w, const char *text, size_t len, int64_t *count) {
  int64_t cap = (int64_t)len + 16;   /* byte-level BPE: about one id per byte at most */
  for (;;) {
    F2_TRY(reserve((void **)&w->ids, &w->cap, w->n + (size_t)cap, sizeof(int32_t)));
    F2_TRY(f2_tokenizer_encode(w->job->tok, w->ids + w->n, count, text, (int64_t)len, cap));
    if (*count <= cap) return F2_OK;
    cap = *count;
  }
}

static void *encode_worker_main(void *arg) {
  encode_worker *w = arg;
  encode_job *job = w->job;
  for (;;) {
    int d = atomic_fetch_add(&job->next_doc, 1);
    if (d >= job->docs || atomic_load(&job->failed)) break;
    size_t a = job->doc_start[d], len = job->doc_start[d + 1] - a;
    int64_t count = 0;
    int rc = encode_one(w, job->text + a, len, &count);
    if (rc != F2_OK) {
      pthread_mutex_lock(&job->lock);   /* the message is this thread's: hand it to the caller's */
      if (!atomic_load(&job->failed)) {
        job->error_code = rc;
        snprintf(job->error, sizeof job->error, "%s", f2_last_error());
        atomic_store(&job->failed, 1);
      }
      pthread_mutex_unlock(&job->lock);
      break;
    }
    job->result[d] = (doc_ids){.worker = w->index, .start = (int64_t)w->n, .count = count};
    w->n += (size_t)count;
  }
  return NULL;
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int f2_tokenize_files(f2_tokenize_stats *stats, const char *out_path, const f2_tokenizer *tok,
                      const char *const *in_paths, int32_t count, int32_t token_bytes, int32_t eos_id,
                      uint64_t tokenizer_id, int32_t threads) {
  if (!out_path || !tok || (count > 0 && !in_paths)) return F2_FAIL(F2_ERR_ARG, "f2_tokenize_files: NULL argument");
  for (int32_t i = 0; i < count; i++)
    if (!in_paths[i]) return F2_FAIL(F2_ERR_ARG, "f2_tokenize_files: input path %d is NULL", (int)i);
  if (threads <= 0) threads = (int32_t)sysconf(_SC_NPROCESSORS_ONLN);
  if (threads < 1) threads = 1;
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  f2_shard_writer *writer = f2_shard_writer_new(out_path, token_bytes, f2_tokenizer_vocab_size(tok), eos_id, tokenizer_id);
  if (!writer) return F2_ERR_ARG;

  f2_tokenize_stats st = {0};
  double t0 = now_seconds();
  doc_reader reader = {.paths = in_paths, .count = count};
  bytes_buf text = {0};
  size_t *doc_start = NULL, starts_cap = 0, results_cap = 0;
  doc_ids *result = NULL;
  encode_worker workers[MAX_THREADS];
  memset(workers, 0, sizeof workers);
  int rc = F2_OK, more = 1;
  while (rc == F2_OK && more) {
    /* Read a batch: documents until BATCH_BYTES per thread are buffered. */
    text.n = 0;
    int32_t docs = 0;
    while (text.n < (size_t)BATCH_BYTES * (size_t)threads) {
      if ((rc = reserve((void **)&doc_start, &starts_cap, (size_t)docs + 2, sizeof *doc_start)) != F2_OK) break;
      doc_start[docs] = text.n;
      int status;
      more = next_document(&reader, &text, &status);
      if ((rc = status) != F2_OK || !more) break;
      if (text.n == doc_start[docs]) {
        st.empty_documents++;
        continue;
      }
      docs++;
    }
    if (rc != F2_OK || docs == 0) break;
    doc_start[docs] = text.n;
    st.documents += docs;
    st.bytes += (int64_t)text.n;

    if ((rc = reserve((void **)&result, &results_cap, (size_t)docs, sizeof *result)) != F2_OK) break;
    encode_job job = {.tok = tok, .text = text.p, .doc_start = doc_start, .result = result, .docs = docs};
    atomic_init(&job.next_doc, 0);
    atomic_init(&job.failed, 0);
    pthread_mutex_init(&job.lock, NULL);
    pthread_t tids[MAX_THREADS];
    int32_t started = 0;
    for (int32_t t = 0; t < threads; t++) {
      workers[t].job = &job;
      workers[t].index = t;
      workers[t].n = 0;
      if (t > 0) {
        if (pthread_create(&tids[t], NULL, encode_worker_main, &workers[t]) != 0) break;
        started++;
      }
    }
    encode_worker_main(&workers[0]);   /* this thread works too */
    for (int32_t t = 1; t <= started; t++) pthread_join(tids[t], NULL);
    pthread_mutex_destroy(&job.lock);
    if (atomic_load(&job.failed)) {
      rc = F2_FAIL(job.error_code, "%s", job.error);
      break;
    }
    for (int32_t d = 0; d < docs && rc == F2_OK; d++)
      rc = f2_shard_writer_add(writer, workers[result[d].worker].ids + result[d].start, result[d].count);
  }
  if (reader.file) fclose(reader.file);
  free(reader.line_buf);
  free(reader.key.p);
  free(text.p);
  free(doc_start);
  free(result);
  for (int32_t t = 0; t < threads; t++) free(workers[t].ids);
  f2_shard_info info;
  if (rc == F2_OK) rc = f2_shard_writer_finish(&info, writer);
  f2_shard_writer_free(writer);
  if (rc == F2_OK && stats) {
    st.tokens = info.token_count;
    st.content_hash = info.content_hash;
    st.seconds = now_seconds() - t0;
    *stats = st;
  }
  return rc;
}

/* ---------------------------------------------------------------- tokenizer id */

/* Exercises the pre-tokenizer and the merges: two tokenizers with one vocab but other merges or
 * other splitting rules encode it differently. */
static const char PROBE[] =
    "The quick brown fox jumps over the lazy dog. It's 2024-06-01; 3.14159 and 1000000 don't match!\n"
    "    def encode(self, text: str) -> list[int]:\n        return [ord(c) for c in text]\t# done\n\n"
    "Caf\xc3\xa9 na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x98\x80 <|endoftext|> "
    "UPPER lower MiXeD   spaces\r\n";

int f2_data_tokenizer_id(uint64_t *out, const f2_tokenizer *tok) {
  if (!out || !tok) return F2_FAIL(F2_ERR_ARG, "f2_data_tokenizer_id: NULL argument");
  int32_t n = f2_tokenizer_vocab_size(tok);
  bytes_buf b = {0};
  int rc = F2_OK;
  for (int32_t id = 0; id < n && rc == F2_OK; id++) {
    const char *t = f2_tokenizer_id_to_token(tok, id);
    char flag = t ? (f2_tokenizer_is_special(tok, id) ? 'S' : 'T') : '-';   /* also separates the strings */
    if (t) rc = bytes_push(&b, t, strlen(t));
    if (rc == F2_OK) rc = bytes_push(&b, &flag, 1);
  }
  int32_t ids[4 + sizeof PROBE];
  for (int i = 0; i < 4; i++) ids[i] = f2_tokenizer_special_id(tok, i);
  int64_t count = 0;
  if (rc == F2_OK) rc = f2_tokenizer_encode(tok, ids + 4, &count, PROBE, (int64_t)sizeof PROBE - 1, (int64_t)sizeof PROBE);
  if (rc == F2_OK && count > (int64_t)sizeof PROBE) rc = F2_FAIL(F2_ERR_ARG, "f2_data_tokenizer_id: the probe text gave %lld ids", (long long)count);
  if (rc == F2_OK) rc = bytes_push(&b, (const char *)ids, sizeof(int32_t) * (size_t)(4 + count));
  if (rc == F2_OK) *out = f2_hash64(b.p, b.n, (uint64_t)n);
  free(b.p);
  return rc;
}
