/* shards.c — token shards: the writer (append documents, then header + fsync + rename) and the
 * memory-mapped reader that validates a shard before anyone trusts its counts. Layout: docs/data.md. */
#include "f2_internal.h"
#include "f2_mmap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { HEADER_BYTES = 256, SHARD_VERSION = 1, CHECKED_BYTES = 56, WRITE_CHUNK = 1 << 16 };
static const char MAGIC[8] = {'F', '2', 'T', 'O', 'K', 'E', 'N', 'S'};

/* ---------------------------------------------------------------- hash */

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t mix64(uint64_t z) {   /* SplitMix64's finalizer */
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static inline uint64_t load_le64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  return v;
}

/* Each word is mixed on its own (independent multiplies pipeline) and only a rotate, multiply and
 * add sit on the chain, so this runs at several GB/s; then one zero-padded tail word, then the length.
 * Streaming: any chunks whose sizes are multiples of 8 bytes, then the tail. */
typedef struct { uint64_t h; uint64_t size; } hash_state;

static void hash_init(hash_state *s, uint64_t seed) { s->h = mix64(seed ^ 0x6A09E667F3BCC909ull), s->size = 0; }

static void hash_words(hash_state *s, const uint8_t *p, size_t size) {
  for (size_t i = 0; i + 8 <= size; i += 8)
    s->h = rotl64(s->h ^ mix64(load_le64(p + i)), 27) * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  s->size += size;
}

static uint64_t hash_final(hash_state *s, const uint8_t *tail, size_t n) {
  uint8_t last[8] = {0};
  if (n) memcpy(last, tail, n);
  hash_words(s, last, 8);   /* always one padded word, so the size must come in below */
  return mix64(s->h ^ (s->size - 8 + n));
}

uint64_t f2_hash64(const void *data, size_t size, uint64_t seed) {
  hash_state s;
  hash_init(&s, seed);
  size_t whole = size & ~(size_t)7;
  hash_words(&s, data, whole);
  return hash_final(&s, (const uint8_t *)data + whole, size - whole);
}

/* ---------------------------------------------------------------- header */

static void put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> 8 * i);
}
static void put_u64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> 8 * i);
}
static uint32_t get_u32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

static void encode_header(uint8_t *h, const f2_shard_info *info) {
  memset(h, 0, HEADER_BYTES);
  memcpy(h, MAGIC, 8);
  put_u32(h + 8, (uint32_t)info->version);
  put_u32(h + 12, (uint32_t)info->token_bytes);
  put_u64(h + 16, (uint64_t)info->token_count);
  put_u64(h + 24, (uint64_t)info->document_count);
  put_u32(h + 32, (uint32_t)info->vocab_size);
  put_u32(h + 36, (uint32_t)info->eos_id);
  put_u64(h + 40, info->tokenizer_id);
  put_u64(h + 48, info->content_hash);
  put_u64(h + 56, f2_hash64(h, CHECKED_BYTES, 0));   /* catches a damaged header before its counts are used */
}

static int check_vocab(const char *path, int32_t token_bytes, int64_t vocab_size, int64_t eos_id) {
  if (token_bytes != 2 && token_bytes != 4)
    return F2_FAIL(F2_ERR_FORMAT, "shard '%s': token width %d bytes (must be 2 or 4)", path, (int)token_bytes);
  if (vocab_size < 1 || vocab_size > INT32_MAX)
    return F2_FAIL(F2_ERR_FORMAT, "shard '%s': vocab size %lld out of range", path, (long long)vocab_size);
  if (token_bytes == 2 && vocab_size > 65536)
    return F2_FAIL(F2_ERR_FORMAT, "shard '%s': vocab size %lld does not fit 2-byte tokens", path, (long long)vocab_size);
  if (eos_id < 0 || eos_id >= vocab_size)
    return F2_FAIL(F2_ERR_FORMAT, "shard '%s': EOS id %lld outside the vocab [0, %lld)", path, (long long)eos_id,
                   (long long)vocab_size);
  return F2_OK;
}

/* ---------------------------------------------------------------- writer */

struct f2_shard_writer {
  FILE *file;
  char *path, *tmp_path;
  f2_shard_info info;
  hash_state hash;
  int64_t buffered;              /* tokens waiting in buf */
  uint8_t buf[WRITE_CHUNK * 4];  /* WRITE_CHUNK tokens at the widest */
  int finished;
};

f2_shard_writer *f2_shard_writer_new(const char *path, int32_t token_bytes, int32_t vocab_size, int32_t eos_id,
                                     uint64_t tokenizer_id) {
  if (!path || !*path) return F2_FAIL_NULL(F2_ERR_ARG, "shard writer: no path");
  if (token_bytes == 0) token_bytes = vocab_size <= 65536 ? 2 : 4;
  if (check_vocab(path, token_bytes, vocab_size, eos_id) != F2_OK) return NULL;
  f2_shard_writer *w = calloc(1, sizeof *w);
  size_t n = strlen(path);
  if (!w || !(w->path = strdup(path)) || !(w->tmp_path = malloc(n + 5))) {
    f2_shard_writer_free(w);
    return F2_FAIL_NULL(F2_ERR_MEM, "out of host memory");
  }
  memcpy(w->tmp_path, path, n);
  memcpy(w->tmp_path + n, ".tmp", 5);
  w->info = (f2_shard_info){.version = SHARD_VERSION, .token_bytes = token_bytes, .vocab_size = vocab_size,
                            .eos_id = eos_id, .tokenizer_id = tokenizer_id};
  hash_init(&w->hash, 0);
  w->file = fopen(w->tmp_path, "wb");
  static const uint8_t zeros[HEADER_BYTES];
  if (!w->file || fwrite(zeros, 1, HEADER_BYTES, w->file) != HEADER_BYTES) {
    F2_FAIL(F2_ERR_IO, "shard '%s': cannot write: %s", w->tmp_path, strerror(errno));
    f2_shard_writer_free(w);
    return NULL;
  }
  return w;
}

static int flush_tokens(f2_shard_writer *w, int last) {
  size_t bytes = (size_t)w->buffered * (size_t)w->info.token_bytes;
  if (!last) hash_words(&w->hash, w->buf, bytes);   /* full chunks are multiples of 8 bytes */
  if (bytes && fwrite(w->buf, 1, bytes, w->file) != bytes)
    return F2_FAIL(F2_ERR_IO, "shard '%s': write failed: %s", w->tmp_path, strerror(errno));
  if (last) {
    size_t whole = bytes & ~(size_t)7;
    hash_words(&w->hash, w->buf, whole);
    w->info.content_hash = hash_final(&w->hash, w->buf + whole, bytes - whole);
  }
  w->buffered = 0;
  return F2_OK;
}

static int push_token(f2_shard_writer *w, int32_t id) {
  uint8_t *p = w->buf + w->buffered * w->info.token_bytes;
  p[0] = (uint8_t)id, p[1] = (uint8_t)(id >> 8);
  if (w->info.token_bytes == 4) p[2] = (uint8_t)(id >> 16), p[3] = (uint8_t)(id >> 24);
  if (++w->buffered == WRITE_CHUNK) return flush_tokens(w, 0);
  return F2_OK;
}

int f2_shard_writer_add(f2_shard_writer *w, const int32_t *tokens, int64_t count) {
  if (!w) return F2_FAIL(F2_ERR_ARG, "shard writer is NULL");
  if (w->finished) return F2_FAIL(F2_ERR_ARG, "shard '%s': already finished", w->path);
  if (count < 0 || (count > 0 && !tokens)) return F2_FAIL(F2_ERR_ARG, "shard '%s': bad token count %lld", w->path, (long long)count);
  for (int64_t i = 0; i < count; i++)
    if (tokens[i] < 0 || tokens[i] >= w->info.vocab_size)
      return F2_FAIL(F2_ERR_ARG, "shard '%s': token %d (document %lld, position %lld) outside the vocab [0, %d)",
                     w->path, (int)tokens[i], (long long)w->info.document_count, (long long)i, (int)w->info.vocab_size);
  for (int64_t i = 0; i < count; i++) F2_TRY(push_token(w, tokens[i]));
  F2_TRY(push_token(w, w->info.eos_id));
  w->info.token_count += count + 1;
  w->info.document_count++;
  return F2_OK;
}

/* Makes the rename itself durable. */
static void sync_parent_dir(const char *path) {
  char dir[4096];
  const char *slash = strrchr(path, '/');
  if (!slash) snprintf(dir, sizeof dir, ".");
  else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path == 0 ? 1 : slash - path), path);
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
}

int f2_shard_writer_finish(f2_shard_info *info, f2_shard_writer *w) {
  if (!w) return F2_FAIL(F2_ERR_ARG, "shard writer is NULL");
  if (w->finished) return F2_FAIL(F2_ERR_ARG, "shard '%s': already finished", w->path);
  F2_TRY(flush_tokens(w, 1));
  uint8_t header[HEADER_BYTES];
  encode_header(header, &w->info);
  if (fflush(w->file) != 0 || fseek(w->file, 0, SEEK_SET) != 0 || fwrite(header, 1, HEADER_BYTES, w->file) != HEADER_BYTES ||
      fflush(w->file) != 0 || fsync(fileno(w->file)) != 0)
    return F2_FAIL(F2_ERR_IO, "shard '%s': write failed: %s", w->tmp_path, strerror(errno));
  int rc = fclose(w->file);
  w->file = NULL;
  if (rc != 0) return F2_FAIL(F2_ERR_IO, "shard '%s': close failed: %s", w->tmp_path, strerror(errno));
  if (rename(w->tmp_path, w->path) != 0)
    return F2_FAIL(F2_ERR_IO, "shard '%s': cannot rename from '%s': %s", w->path, w->tmp_path, strerror(errno));
  sync_parent_dir(w->path);
  w->finished = 1;
  if (info) *info = w->info;
  return F2_OK;
}

void f2_shard_writer_free(f2_shard_writer *w) {
  if (!w) return;
  if (w->file) fclose(w->file);
  if (!w->finished && w->tmp_path) unlink(w->tmp_path);
  free(w->path);
  free(w->tmp_path);
  free(w);
}

/* ---------------------------------------------------------------- reader */

struct f2_shard {
  f2_mapping *map;
  const uint8_t *tokens;
  f2_shard_info info;
  char *path;
};

static int parse_header(f2_shard_info *info, const uint8_t *h, size_t file_size, const char *path) {
  if (file_size < HEADER_BYTES)
    return F2_FAIL(F2_ERR_FORMAT, "shard '%s': %zu bytes, too small for the %d-byte header", path, file_size, HEADER_BYTES);
  if (memcmp(h, MAGIC, 8) != 0) return F2_FAIL(F2_ERR_FORMAT, "shard '%s': not a fairy2 token shard (bad magic)", path);
  info->version = (int32_t)get_u32(h + 8);
  if (info->version != SHARD_VERSION)
    return F2_FAIL(F2_ERR_FORMAT, "shard '%s': version %u, this build reads version %d", path, get_u32(h + 8), SHARD_VERSION);
  if (load_le64(h + 56) != f2_hash64(h, CHECKED_BYTES, 0))
    return F2_FAIL(F2_ERR_FORMAT, "shard '%s': header check failed (damaged header)", path);
  info->token_bytes = (int32_t)get_u32(h + 12);
  uint64_t count = load_le64(h + 16), docs = load_le64(h + 24);
  uint32_t vocab = get_u32(h + 32), eos = get_u32(h + 36);
  F2_TRY(check_vocab(path, info->token_bytes, vocab, eos));
  uint64_t have = (file_size - HEADER_BYTES) / (uint64_t)info->token_bytes;
  if (count != have || (file_size - HEADER_BYTES) % (uint64_t)info->token_bytes)
    return F2_FAIL(F2_ERR_FORMAT, "shard '%s': header says %llu tokens (%llu bytes) but the file holds %zu bytes after the header%s",
                   path, (unsigned long long)count, (unsigned long long)count * (uint64_t)info->token_bytes,
                   file_size - HEADER_BYTES, count > have ? " (truncated)" : "");
  if (docs > count) return F2_FAIL(F2_ERR_FORMAT, "shard '%s': %llu documents in %llu tokens", path,
                                   (unsigned long long)docs, (unsigned long long)count);
  info->token_count = (int64_t)count;
  info->document_count = (int64_t)docs;
  info->vocab_size = (int32_t)vocab;
  info->eos_id = (int32_t)eos;
  info->tokenizer_id = load_le64(h + 40);
  info->content_hash = load_le64(h + 48);
  return F2_OK;
}

f2_shard *f2_shard_open(const char *path) {
  if (!path) return F2_FAIL_NULL(F2_ERR_ARG, "shard path is NULL");
  f2_shard *s = calloc(1, sizeof *s);
  if (!s || !(s->path = strdup(path))) {
    free(s);
    return F2_FAIL_NULL(F2_ERR_MEM, "out of host memory");
  }
  s->map = f2_mapping_open(path, "shard");
  if (!s->map || parse_header(&s->info, s->map->base, s->map->size, path) != F2_OK) {
    f2_shard_close(s);
    return NULL;
  }
  s->tokens = s->map->base + HEADER_BYTES;
  /* The loader reads scattered windows: readahead of whole neighbourhoods would mostly be wasted. */
  if (s->map->size > (size_t)1 << 24) madvise(s->map->base, s->map->size, MADV_RANDOM);
  return s;
}

void f2_shard_close(f2_shard *s) {
  if (!s) return;
  f2_mapping_release(s->map);
  free(s->path);
  free(s);
}

int f2_shard_get_info(f2_shard_info *out, const f2_shard *s) {
  if (!out || !s) return F2_FAIL(F2_ERR_ARG, "f2_shard_get_info: NULL argument");
  *out = s->info;
  return F2_OK;
}

const char *f2_shard_path(const f2_shard *s) { return s ? s->path : ""; }

int f2_shard_read(int32_t *out, const f2_shard *s, int64_t start, int64_t count) {
  if (!out || !s) return F2_FAIL(F2_ERR_ARG, "f2_shard_read: NULL argument");
  if (start < 0 || count < 0 || start > s->info.token_count - count)
    return F2_FAIL(F2_ERR_ARG, "shard '%s': tokens [%lld, %lld) outside [0, %lld)", s->path, (long long)start,
                   (long long)(start + count), (long long)s->info.token_count);
  if (s->info.token_bytes == 2) {
    const uint8_t *p = s->tokens + 2 * start;
    for (int64_t i = 0; i < count; i++) out[i] = (int32_t)(p[2 * i] | p[2 * i + 1] << 8);
  } else {
    const uint8_t *p = s->tokens + 4 * start;
    for (int64_t i = 0; i < count; i++) out[i] = (int32_t)get_u32(p + 4 * i);
  }
  return F2_OK;
}

int f2_shard_verify(const f2_shard *s) {
  if (!s) return F2_FAIL(F2_ERR_ARG, "f2_shard_verify: NULL shard");
  size_t bytes = (size_t)s->info.token_count * (size_t)s->info.token_bytes;
  uint64_t h = f2_hash64(s->tokens, bytes, 0);
  if (h != s->info.content_hash)
    return F2_FAIL(F2_ERR_FORMAT, "shard '%s': content hash %016llx, header says %016llx (damaged tokens)", s->path,
                   (unsigned long long)h, (unsigned long long)s->info.content_hash);
  int32_t chunk[4096];
  for (int64_t i = 0; i < s->info.token_count; i += 4096) {
    int64_t n = s->info.token_count - i < 4096 ? s->info.token_count - i : 4096;
    F2_TRY(f2_shard_read(chunk, s, i, n));
    for (int64_t j = 0; j < n; j++)
      if (chunk[j] >= s->info.vocab_size)
        return F2_FAIL(F2_ERR_FORMAT, "shard '%s': token %d at %lld outside the vocab [0, %d)", s->path, (int)chunk[j],
                       (long long)(i + j), (int)s->info.vocab_size);
  }
  return F2_OK;
}
