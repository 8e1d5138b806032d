/* safetensors.c — the safetensors format: a strict reader (mmap, zero-copy tensor views) and an
 * atomic writer (<path>.tmp, fsync, rename, so a checkpoint is either whole or absent).
 *
 * Layout: u64 little-endian N, then N bytes of JSON
 *   {"__metadata__": {"key": "value", ...}, "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]}, ...}
 * (padded with spaces), then the data. Offsets are relative to the data and must tile it exactly: no
 * overlap, no hole, nothing left over. Every violation is refused with the file and tensor named. */
#include "f2_mmap.h"

#include <stdio.h>

enum { MAX_HEADER_BYTES = 100000000, MAX_JSON_DEPTH = 64, MAX_JSON_VALUES = 1 << 22 };

/* ---------------------------------------------------------------- a small strict JSON parser
 * Only what a safetensors header holds: objects, arrays, strings (with escapes), integers. Values
 * land in a flat pre-order array; `next` skips a whole subtree, object members alternate key, value. */
enum { J_OBJECT, J_ARRAY, J_STRING, J_INT };

typedef struct {
  int32_t type;
  int64_t count;    /* members of an object, elements of an array */
  int64_t next;     /* index of the value after this one's subtree */
  int64_t ival;
  size_t str;       /* decoded, NUL-terminated string: offset into the string arena */
  size_t offset;    /* byte offset in the header, for messages */
} jnode;

typedef struct {
  const char *path;
  const uint8_t *s;
  size_t n, pos;
  jnode *nodes;
  int64_t count, cap;
  char *strs;       /* decoded strings; never longer than their quoted source, so n + 1 bytes suffice */
  size_t strs_len;
} jparser;

static int jfail(jparser *p, const char *what) {
  return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': invalid JSON header at byte %zu: %s", p->path, p->pos, what);
}

static void jskip_ws(jparser *p) {
  while (p->pos < p->n && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
    p->pos++;
}

static int64_t jnew(jparser *p, int32_t type) {
  if (p->count >= MAX_JSON_VALUES) return -1;
  if (p->count == p->cap) {
    int64_t cap = p->cap ? 2 * p->cap : 64;
    jnode *nodes = realloc(p->nodes, (size_t)cap * sizeof *nodes);
    if (!nodes) return -2;
    p->nodes = nodes;
    p->cap = cap;
  }
  jnode *j = &p->nodes[p->count];
  memset(j, 0, sizeof *j);
  j->type = type;
  j->offset = p->pos;
  return p->count++;
}

static int jnew_checked(jparser *p, int32_t type, int64_t *idx) {
  *idx = jnew(p, type);
  if (*idx == -1) return jfail(p, "more JSON values than a safetensors header can need");
  if (*idx == -2) return F2_FAIL(F2_ERR_MEM, "out of host memory parsing '%s'", p->path);
  return F2_OK;
}

static int jhex4(jparser *p, uint32_t *out) {
  if (p->n - p->pos < 4) return jfail(p, "truncated \\u escape");
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    uint8_t c = p->s[p->pos++];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= c - '0';
    else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
    else return jfail(p, "bad hex digit in \\u escape");
  }
  *out = v;
  return F2_OK;
}

static void jput_utf8(jparser *p, uint32_t cp) {
  char *o = p->strs + p->strs_len;
  if (cp < 0x80) {
    o[0] = (char)cp;
    p->strs_len += 1;
  } else if (cp < 0x800) {
    o[0] = (char)(0xc0 | cp >> 6);
    o[1] = (char)(0x80 | (cp & 0x3f));
    p->strs_len += 2;
  } else if (cp < 0x10000) {
    o[0] = (char)(0xe0 | cp >> 12);
    o[1] = (char)(0x80 | (cp >> 6 & 0x3f));
    o[2] = (char)(0x80 | (cp & 0x3f));
    p->strs_len += 3;
  } else {
    o[0] = (char)(0xf0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    p->strs_len += 4;
  }
}

/* One UTF-8 sequence of len bytes at s: right lead byte, continuation bytes, no overlong form, no
 * surrogate, nothing above U+10FFFF. */
static int utf8_valid(const uint8_t *s, size_t left, size_t len) {
  if (left < len || s[0] < 0xc2 || s[0] > 0xf4) return 0;
  uint32_t cp = s[0] & (0x7f >> len);
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = cp << 6 | (s[i] & 0x3f);
  }
  static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
  return cp >= min_cp[len] && cp <= 0x10ffff && (cp < 0xd800 || cp > 0xdfff);
}

static int jstring(jparser *p) {
  int64_t idx;
  F2_TRY(jnew_checked(p, J_STRING, &idx));
  p->nodes[idx].str = p->strs_len;
  p->pos++; /* the opening quote */
  for (;;) {
    if (p->pos >= p->n) return jfail(p, "unterminated string");
    uint8_t c = p->s[p->pos];
    if (c == '"') break;
    if (c < 0x20) return jfail(p, "control character inside a string");
    if (c >= 0x80) {   /* a UTF-8 sequence: copied whole once it is valid */
      size_t len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
      if (!utf8_valid(p->s + p->pos, p->n - p->pos, len)) return jfail(p, "invalid UTF-8 in a string");
      memcpy(p->strs + p->strs_len, p->s + p->pos, len);
      p->strs_len += len;
      p->pos += len;
      continue;
    }
    if (c != '\\') {
      p->strs[p->strs_len++] = (char)c;
      p->pos++;
      continue;
    }
    if (++p->pos >= p->n) return jfail(p, "unterminated escape");
    c = p->s[p->pos++];
    const char *simple = strchr("\"\\/bfnrt", c);
    if (c && simple) {
      static const char decoded[] = "\"\\/\b\f\n\r\t";
      p->strs[p->strs_len++] = decoded[simple - "\"\\/bfnrt"];
      continue;
    }
    if (c != 'u') return (p->pos--, jfail(p, "unknown escape"));
    uint32_t cp;
    F2_TRY(jhex4(p, &cp));
    if (cp >= 0xdc00 && cp <= 0xdfff) return jfail(p, "lone low surrogate in \\u escape");
    if (cp >= 0xd800 && cp <= 0xdbff) {
      uint32_t lo;
      if (p->n - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
        return jfail(p, "high surrogate without its low half");
      p->pos += 2;
      F2_TRY(jhex4(p, &lo));
      if (lo < 0xdc00 || lo > 0xdfff) return jfail(p, "high surrogate without its low half");
      cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    if (cp == 0) return jfail(p, "\\u0000 inside a string");
    jput_utf8(p, cp);
  }
  p->pos++; /* the closing quote */
  p->strs[p->strs_len++] = 0;
  p->nodes[idx].next = p->count;
  return F2_OK;
}

static int jinteger(jparser *p) {
  int64_t idx;
  F2_TRY(jnew_checked(p, J_INT, &idx));
  int neg = p->s[p->pos] == '-';
  if (neg) p->pos++;
  size_t start = p->pos;
  uint64_t v = 0;
  while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
    uint64_t d = p->s[p->pos] - '0';
    if (v > (UINT64_C(9223372036854775807) - d) / 10) return jfail(p, "integer too large");
    v = v * 10 + d;
    p->pos++;
  }
  if (p->pos == start) return jfail(p, "expected digits");
  if (p->s[start] == '0' && p->pos - start > 1) return jfail(p, "leading zero in a number");
  if (p->pos < p->n && (p->s[p->pos] == '.' || p->s[p->pos] == 'e' || p->s[p->pos] == 'E'))
    return jfail(p, "only integers belong in a safetensors header");
  p->nodes[idx].ival = neg ? -(int64_t)v : (int64_t)v;
  p->nodes[idx].next = p->count;
  return F2_OK;
}

static int jvalue(jparser *p, int depth) {
  jskip_ws(p);
  if (p->pos >= p->n) return jfail(p, "unexpected end of the header");
  uint8_t c = p->s[p->pos];
  if (c == '"') return jstring(p);
  if (c == '-' || (c >= '0' && c <= '9')) return jinteger(p);
  if (c != '{' && c != '[') {
    if (c == 't' || c == 'f' || c == 'n') return jfail(p, "true/false/null do not belong in a safetensors header");
    return jfail(p, "unexpected character");
  }
  if (depth >= MAX_JSON_DEPTH) return jfail(p, "nesting too deep");
  int is_object = c == '{';
  char close = is_object ? '}' : ']';
  int64_t idx;
  F2_TRY(jnew_checked(p, is_object ? J_OBJECT : J_ARRAY, &idx));
  p->pos++;
  jskip_ws(p);
  int64_t count = 0;
  if (p->pos < p->n && p->s[p->pos] == close) {
    p->pos++;
  } else {
    for (;;) {
      if (is_object) {
        jskip_ws(p);
        if (p->pos >= p->n || p->s[p->pos] != '"') return jfail(p, "expected a string key");
        F2_TRY(jstring(p));
        jskip_ws(p);
        if (p->pos >= p->n || p->s[p->pos] != ':') return jfail(p, "expected ':'");
        p->pos++;
      }
      F2_TRY(jvalue(p, depth + 1));
      count++;
      jskip_ws(p);
      if (p->pos < p->n && p->s[p->pos] == ',') {
        p->pos++;
        continue;
      }
      if (p->pos < p->n && p->s[p->pos] == close) {
        p->pos++;
        break;
      }
      return jfail(p, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
  }
  p->nodes[idx].count = count;
  p->nodes[idx].next = p->count;
  return F2_OK;
}

/* ---------------------------------------------------------------- the reader */
typedef struct {
  const char *name;
  int32_t dtype;
  int32_t ndim;
  int64_t shape[F2_MAX_DIMS];
  uint64_t begin, end;   /* relative to the data */
} st_entry;

struct f2_safetensors {
  char *path;
  f2_mapping *map;
  size_t data_start;     /* 8 + N */
  char *strs;            /* names, metadata keys and values point in here */
  st_entry *entries;     /* sorted by data offset */
  int64_t count;
  const char **meta_keys, **meta_values;
  int64_t meta_count;
};

static const struct { const char *name; int32_t dtype; } st_dtypes[] = {
    {"F32", F2_F32}, {"F16", F2_F16}, {"BF16", F2_BF16}, {"I64", F2_I64},
    {"I32", F2_I32}, {"U8", F2_U8},   {"I8", F2_I8},
};
/* Valid safetensors dtypes that fairy2 has no tensor type for: refused as unsupported, not unknown. */
static const char *const st_unsupported[] = {"BOOL", "F64", "I16", "U16", "U32", "U64", "F8_E4M3", "F8_E5M2",
                                             "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"};

static const char *st_dtype_string(int32_t dtype) {
  for (size_t i = 0; i < sizeof st_dtypes / sizeof *st_dtypes; i++)
    if (st_dtypes[i].dtype == dtype) return st_dtypes[i].name;
  return NULL;
}

static int parse_dtype(const f2_safetensors *st, const char *tensor, const char *s, int32_t *out) {
  for (size_t i = 0; i < sizeof st_dtypes / sizeof *st_dtypes; i++)
    if (strcmp(s, st_dtypes[i].name) == 0) return (*out = st_dtypes[i].dtype, F2_OK);
  for (size_t i = 0; i < sizeof st_unsupported / sizeof *st_unsupported; i++)
    if (strcmp(s, st_unsupported[i]) == 0)
      return F2_FAIL(F2_ERR_UNSUPPORTED,
                     "safetensors file '%s': tensor '%s': dtype %s is not supported by fairy2 "
                     "(F32, F16, BF16, I64, I32, U8, I8 are)", st->path, tensor, s);
  return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': tensor '%s': unknown dtype '%.40s'", st->path, tensor, s);
}

/* One tensor's entry: {"dtype": str, "shape": [ints >= 0], "data_offsets": [begin, end]}, each once. */
static int parse_entry(const f2_safetensors *st, const jparser *p, int64_t v, st_entry *e) {
  const jnode *obj = &p->nodes[v];
  if (obj->type != J_OBJECT)
    return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': tensor '%s': entry is not a JSON object", st->path, e->name);
  int seen_dtype = 0, seen_shape = 0, seen_offsets = 0;
  int64_t k = v + 1;
  for (int64_t m = 0; m < obj->count; m++) {
    const char *key = p->strs + p->nodes[k].str;
    int64_t val = p->nodes[k].next;
    const jnode *jv = &p->nodes[val];
    if (strcmp(key, "dtype") == 0 && !seen_dtype) {
      seen_dtype = 1;
      if (jv->type != J_STRING)
        return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': tensor '%s': dtype is not a string", st->path, e->name);
      F2_TRY(parse_dtype(st, e->name, p->strs + jv->str, &e->dtype));
    } else if (strcmp(key, "shape") == 0 && !seen_shape) {
      seen_shape = 1;
      if (jv->type != J_ARRAY)
        return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': tensor '%s': shape is not an array", st->path, e->name);
      if (jv->count > F2_MAX_DIMS)
        return F2_FAIL(F2_ERR_UNSUPPORTED, "safetensors file '%s': tensor '%s': %lld dims, fairy2 supports at most %d",
                       st->path, e->name, (long long)jv->count, F2_MAX_DIMS);
      e->ndim = (int32_t)jv->count;
      for (int32_t d = 0; d < e->ndim; d++) {
        const jnode *x = &p->nodes[val + 1 + d];   /* integers have no subtree */
        if (x->type != J_INT || x->ival < 0)
          return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': tensor '%s': shape[%d] is not an integer >= 0",
                         st->path, e->name, d);
        e->shape[d] = x->ival;
      }
    } else if (strcmp(key, "data_offsets") == 0 && !seen_offsets) {
      seen_offsets = 1;
      if (jv->type != J_ARRAY || jv->count != 2 || p->nodes[val + 1].type != J_INT || p->nodes[val + 2].type != J_INT ||
          p->nodes[val + 1].ival < 0 || p->nodes[val + 2].ival < 0)
        return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': tensor '%s': data_offsets is not [begin, end] (integers >= 0)",
                       st->path, e->name);
      e->begin = (uint64_t)p->nodes[val + 1].ival;
      e->end = (uint64_t)p->nodes[val + 2].ival;
    } else if (strcmp(key, "dtype") == 0 || strcmp(key, "shape") == 0 || strcmp(key, "data_offsets") == 0) {
      return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': tensor '%s': key '%s' repeated", st->path, e->name, key);
    }   /* other keys: ignored, as the reference implementation does */
    k = jv->next;
  }
  if (!seen_dtype || !seen_shape || !seen_offsets)
    return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': tensor '%s': missing '%s'", st->path, e->name,
                   !seen_dtype ? "dtype" : !seen_shape ? "shape" : "data_offsets");
  /* dtype x shape must be the byte span exactly; the product is checked for overflow on the way. */
  uint64_t bytes = f2_dtype_size(e->dtype);
  for (int32_t d = 0; d < e->ndim; d++) {
    if (e->shape[d] && bytes > UINT64_MAX / (uint64_t)e->shape[d])
      return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': tensor '%s': shape too large", st->path, e->name);
    bytes *= (uint64_t)e->shape[d];
  }
  if (e->end < e->begin)
    return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': tensor '%s': data_offsets [%llu, %llu] end before they begin",
                   st->path, e->name, (unsigned long long)e->begin, (unsigned long long)e->end);
  if (e->end - e->begin != bytes)
    return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': tensor '%s': size mismatch: %s of %lld elements needs %llu bytes "
                   "but data_offsets [%llu, %llu] span %llu", st->path, e->name, st_dtype_string(e->dtype),
                   (long long)(bytes / f2_dtype_size(e->dtype)), (unsigned long long)bytes,
                   (unsigned long long)e->begin, (unsigned long long)e->end, (unsigned long long)(e->end - e->begin));
  return F2_OK;
}

static int parse_metadata(f2_safetensors *st, const jparser *p, int64_t v) {
  const jnode *obj = &p->nodes[v];
  if (obj->type != J_OBJECT)
    return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': __metadata__ is not a JSON object", st->path);
  st->meta_keys = calloc((size_t)obj->count + 1, sizeof *st->meta_keys);
  st->meta_values = calloc((size_t)obj->count + 1, sizeof *st->meta_values);
  if (!st->meta_keys || !st->meta_values) return F2_FAIL(F2_ERR_MEM, "out of host memory");
  int64_t k = v + 1;
  for (int64_t m = 0; m < obj->count; m++) {
    int64_t val = p->nodes[k].next;
    const char *key = p->strs + p->nodes[k].str;
    if (p->nodes[val].type != J_STRING)
      return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': __metadata__ value of '%.60s' is not a string", st->path, key);
    for (int64_t j = 0; j < m; j++)
      if (strcmp(st->meta_keys[j], key) == 0)
        return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': __metadata__ key '%.60s' appears twice", st->path, key);
    st->meta_keys[m] = key;
    st->meta_values[m] = p->strs + p->nodes[val].str;
    k = p->nodes[val].next;
  }
  st->meta_count = obj->count;
  return F2_OK;
}

static int compare_begin(const void *a, const void *b) {
  const st_entry *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return (x->end > y->end) - (x->end < y->end);
}

static int compare_name(const void *a, const void *b) {
  return strcmp((*(const st_entry *const *)a)->name, (*(const st_entry *const *)b)->name);
}

/* Sorted by offset, the tensors must tile [0, data_bytes): begin of each = end of the previous. */
static int check_layout(f2_safetensors *st, uint64_t data_bytes) {
  qsort(st->entries, (size_t)st->count, sizeof *st->entries, compare_begin);
  uint64_t pos = 0;
  for (int64_t i = 0; i < st->count; i++) {
    const st_entry *e = &st->entries[i];
    if (e->end > data_bytes)
      return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': tensor '%s': data_offsets [%llu, %llu] out of range: "
                     "the data is %llu bytes (file truncated?)", st->path, e->name, (unsigned long long)e->begin,
                     (unsigned long long)e->end, (unsigned long long)data_bytes);
    if (e->begin < pos)
      return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': tensor '%s' overlaps tensor '%s' (data_offsets [%llu, %llu])",
                     st->path, e->name, st->entries[i - 1].name, (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->begin > pos)
      return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': hole of %llu bytes before tensor '%s' (data_offsets [%llu, %llu])",
                     st->path, (unsigned long long)(e->begin - pos), e->name, (unsigned long long)e->begin,
                     (unsigned long long)e->end);
    pos = e->end;
  }
  if (pos != data_bytes)
    return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': hole: the last %llu bytes of the data belong to no tensor",
                   st->path, (unsigned long long)(data_bytes - pos));
  /* Names must be unique (JSON objects may repeat keys). */
  const st_entry **by_name = malloc((size_t)(st->count ? st->count : 1) * sizeof *by_name);
  if (!by_name) return F2_FAIL(F2_ERR_MEM, "out of host memory");
  for (int64_t i = 0; i < st->count; i++) by_name[i] = &st->entries[i];
  qsort(by_name, (size_t)st->count, sizeof *by_name, compare_name);
  for (int64_t i = 1; i < st->count; i++)
    if (strcmp(by_name[i]->name, by_name[i - 1]->name) == 0) {
      int rc = F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': tensor '%s' appears twice", st->path, by_name[i]->name);
      free(by_name);
      return rc;
    }
  free(by_name);
  return F2_OK;
}

static int parse_header(f2_safetensors *st) {
  const f2_mapping *m = st->map;
  if (m->size < 8)
    return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': truncated: %zu bytes, too short for the 8-byte header length",
                   st->path, m->size);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | m->base[i];
  if (n > m->size - 8)
    return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': header length %llu goes beyond the end of the file "
                   "(%zu bytes; truncated or not safetensors)", st->path, (unsigned long long)n, m->size);
  if (n > MAX_HEADER_BYTES)
    return F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': header length %llu is over the %d-byte limit", st->path,
                   (unsigned long long)n, MAX_HEADER_BYTES);
  st->data_start = 8 + (size_t)n;

  jparser p = {.path = st->path, .s = m->base + 8, .n = (size_t)n};
  st->strs = p.strs = malloc((size_t)n + 1);
  if (!p.strs) return F2_FAIL(F2_ERR_MEM, "out of host memory");
  jskip_ws(&p);
  int rc = p.pos < p.n && p.s[p.pos] == '{' ? jvalue(&p, 0) : jfail(&p, "the header is not a JSON object");
  if (rc == F2_OK) {
    jskip_ws(&p);
    if (p.pos != p.n) rc = jfail(&p, "unexpected text after the JSON object");
  }
  if (rc == F2_OK) {
    st->entries = calloc((size_t)p.nodes[0].count + 1, sizeof *st->entries);
    if (!st->entries) rc = F2_FAIL(F2_ERR_MEM, "out of host memory");
  }
  int seen_metadata = 0;
  int64_t k = 1;
  for (int64_t i = 0; rc == F2_OK && i < p.nodes[0].count; i++) {
    const char *key = p.strs + p.nodes[k].str;
    int64_t val = p.nodes[k].next;
    if (strcmp(key, "__metadata__") == 0) {
      rc = seen_metadata ? F2_FAIL(F2_ERR_FORMAT, "safetensors file '%s': __metadata__ appears twice", st->path)
                         : parse_metadata(st, &p, val);
      seen_metadata = 1;
    } else {
      st_entry *e = &st->entries[st->count++];
      e->name = key;
      rc = parse_entry(st, &p, val, e);
    }
    k = p.nodes[val].next;
  }
  free(p.nodes);
  F2_TRY(rc);
  return check_layout(st, (uint64_t)(m->size - st->data_start));
}

f2_safetensors *f2_safetensors_open(const char *path) {
  if (!path) return F2_FAIL_NULL(F2_ERR_ARG, "f2_safetensors_open: path is NULL");
  f2_safetensors *st = calloc(1, sizeof *st);
  if (!st || !(st->path = strdup(path))) {
    free(st);
    return F2_FAIL_NULL(F2_ERR_MEM, "out of host memory");
  }
  st->map = f2_mapping_open(path, "safetensors");
  if (!st->map || parse_header(st) != F2_OK) {
    f2_safetensors_close(st);
    return NULL;
  }
  return st;
}

void f2_safetensors_close(f2_safetensors *st) {
  if (!st) return;
  f2_mapping_release(st->map);   /* tensor views still hold the mapping */
  free(st->path);
  free(st->strs);
  free(st->entries);
  free(st->meta_keys);
  free(st->meta_values);
  free(st);
}

static const st_entry *entry_at(const f2_safetensors *st, int64_t i) {
  if (!st) return F2_FAIL_NULL(F2_ERR_ARG, "safetensors handle is NULL");
  if (i < 0 || i >= st->count)
    return F2_FAIL_NULL(F2_ERR_ARG, "safetensors file '%s': tensor index %lld outside 0..%lld", st->path,
                        (long long)i, (long long)st->count - 1);
  return &st->entries[i];
}

int64_t f2_safetensors_count(const f2_safetensors *st) { return st ? st->count : 0; }

const char *f2_safetensors_name(const f2_safetensors *st, int64_t i) {
  const st_entry *e = entry_at(st, i);
  return e ? e->name : NULL;
}

int64_t f2_safetensors_find(const f2_safetensors *st, const char *name) {
  for (int64_t i = 0; st && name && i < st->count; i++)
    if (strcmp(st->entries[i].name, name) == 0) return i;
  return -1;
}

int32_t f2_safetensors_dtype(const f2_safetensors *st, int64_t i) {
  const st_entry *e = entry_at(st, i);
  return e ? e->dtype : -1;
}

int32_t f2_safetensors_shape(int64_t *shape, const f2_safetensors *st, int64_t i) {
  const st_entry *e = entry_at(st, i);
  if (!e) return F2_ERR_ARG;
  for (int32_t d = 0; d < e->ndim; d++) shape[d] = e->shape[d];
  return e->ndim;
}

f2_tensor *f2_safetensors_tensor(const f2_safetensors *st, int64_t i) {
  const st_entry *e = entry_at(st, i);
  if (!e) return NULL;
  size_t offset = st->data_start + (size_t)e->begin;
  size_t elem = f2_dtype_size(e->dtype);
  if (offset % elem == 0) return f2_mapping_view(st->map, offset, e->dtype, e->ndim, e->shape);
  /* Misaligned for its dtype (the format allows it): a copy, so no one reads misaligned elements. */
  f2_tensor *t = f2_tensor_new(e->dtype, F2_CPU, e->ndim, e->shape);
  if (t) memcpy(t->data, st->map->base + offset, (size_t)(e->end - e->begin));
  return t;
}

int64_t f2_safetensors_metadata_count(const f2_safetensors *st) { return st ? st->meta_count : 0; }

const char *f2_safetensors_metadata_key(const f2_safetensors *st, int64_t i) {
  return st && i >= 0 && i < st->meta_count ? st->meta_keys[i] : NULL;
}

const char *f2_safetensors_metadata_value(const f2_safetensors *st, int64_t i) {
  return st && i >= 0 && i < st->meta_count ? st->meta_values[i] : NULL;
}

/* ---------------------------------------------------------------- the writer */
typedef struct {
  char *buf;
  size_t len, cap;
  int oom;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1) cap *= 2;
    char *buf = realloc(b->buf, cap);
    if (!buf) {
      b->oom = 1;
      return;
    }
    b->buf = buf;
    b->cap = cap;
  }
  memcpy(b->buf + b->len, s, n);
  b->len += n;
  b->buf[b->len] = 0;
}

static void sb_cstr(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_u64(strbuf *b, const char *before, uint64_t v) {
  char tmp[32];
  sb_put(b, before, strlen(before));
  sb_put(b, tmp, (size_t)snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v));
}

static void sb_json_string(strbuf *b, const char *s) {
  sb_cstr(b, "\"");
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      char esc[2] = {'\\', (char)c};
      sb_put(b, esc, 2);
    } else if (c < 0x20) {
      char esc[8];
      snprintf(esc, sizeof esc, "\\u%04x", c);
      sb_put(b, esc, 6);
    } else {
      sb_put(b, (const char *)&c, 1);
    }
  }
  sb_cstr(b, "\"");
}

/* Writes the elements of t in row-major order, whatever its strides. */
static int write_tensor(FILE *f, const f2_tensor *t) {
  size_t nbytes = f2_tensor_nbytes(t);
  if (f2_tensor_is_contiguous(t)) return nbytes == 0 || fwrite(t->data, 1, nbytes, f) == nbytes ? 0 : -1;
  size_t elem = f2_dtype_size(t->dtype);
  uint8_t *buf = malloc(nbytes);
  if (!buf) return -2;
  int64_t idx[F2_MAX_DIMS] = {0}, n = f2_tensor_numel(t);
  for (int64_t k = 0; k < n; k++) {
    int64_t off = 0;
    for (int d = 0; d < t->ndim; d++) off += idx[d] * t->stride[d];
    memcpy(buf + (size_t)k * elem, (const uint8_t *)t->data + off * (int64_t)elem, elem);
    for (int d = t->ndim - 1; d >= 0 && ++idx[d] == t->shape[d]; d--) idx[d] = 0;
  }
  int rc = fwrite(buf, 1, nbytes, f) == nbytes ? 0 : -1;
  free(buf);
  return rc;
}

static int build_header(strbuf *h, const char *const *names, const f2_tensor *const *tensors, int64_t count,
                        const char *const *meta_keys, const char *const *meta_values, int64_t meta_count) {
  sb_cstr(h, "{");
  if (meta_count > 0) {
    sb_cstr(h, "\"__metadata__\":{");
    for (int64_t i = 0; i < meta_count; i++) {
      if (!meta_keys[i] || !meta_values[i]) return F2_FAIL(F2_ERR_ARG, "safetensors save: metadata %lld is NULL", (long long)i);
      if (i) sb_cstr(h, ",");
      sb_json_string(h, meta_keys[i]);
      sb_cstr(h, ":");
      sb_json_string(h, meta_values[i]);
    }
    sb_cstr(h, "}");
  }
  uint64_t offset = 0;
  for (int64_t i = 0; i < count; i++) {
    const f2_tensor *t = tensors[i];
    if (!names[i] || !t) return F2_FAIL(F2_ERR_ARG, "safetensors save: tensor or name %lld is NULL", (long long)i);
    if (strcmp(names[i], "__metadata__") == 0) return F2_FAIL(F2_ERR_ARG, "safetensors save: '__metadata__' is no tensor name");
    for (int64_t j = 0; j < i; j++)
      if (strcmp(names[j], names[i]) == 0) return F2_FAIL(F2_ERR_ARG, "safetensors save: tensor name '%s' given twice", names[i]);
    if (t->device != F2_CPU)
      return F2_FAIL(F2_ERR_ARG, "safetensors save: tensor '%s' is on the GPU; copy it to the CPU first", names[i]);
    const char *dtype = st_dtype_string(t->dtype);
    if (!dtype) return F2_FAIL(F2_ERR_ARG, "safetensors save: tensor '%s' has invalid dtype %d", names[i], (int)t->dtype);
    if (meta_count > 0 || i) sb_cstr(h, ",");
    sb_json_string(h, names[i]);
    sb_cstr(h, ":{\"dtype\":\"");
    sb_put(h, dtype, strlen(dtype));
    sb_cstr(h, "\",\"shape\":[");
    for (int d = 0; d < t->ndim; d++) sb_u64(h, d ? "," : "", (uint64_t)t->shape[d]);
    uint64_t nbytes = f2_tensor_nbytes(t);
    sb_u64(h, "],\"data_offsets\":[", offset);
    sb_u64(h, ",", offset + nbytes);
    sb_cstr(h, "]}");
    offset += nbytes;
  }
  sb_cstr(h, "}");
  while (h->len % 8) sb_cstr(h, " ");   /* pad so the data starts 8-byte aligned, as the Python writer does */
  return h->oom ? F2_FAIL(F2_ERR_MEM, "out of host memory") : F2_OK;
}

/* fsyncs the directory holding path, so the rename itself survives a crash. */
static void sync_parent_dir(const char *path) {
  char dir[4096];
  const char *slash = strrchr(path, '/');
  if (!slash) snprintf(dir, sizeof dir, ".");
  else snprintf(dir, sizeof dir, "%.*s", (int)(slash == path ? 1 : slash - path), path);
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
}

int f2_safetensors_save(const char *path, const char *const *names, const f2_tensor *const *tensors, int64_t count,
                        const char *const *metadata_keys, const char *const *metadata_values, int64_t metadata_count) {
  if (!path || count < 0 || metadata_count < 0 || (count > 0 && (!names || !tensors)) ||
      (metadata_count > 0 && (!metadata_keys || !metadata_values)))
    return F2_FAIL(F2_ERR_ARG, "f2_safetensors_save: bad arguments (NULL path or arrays, negative count)");
  strbuf h = {0};
  int rc = build_header(&h, names, tensors, count, metadata_keys, metadata_values, metadata_count);
  if (rc != F2_OK) {
    free(h.buf);
    return rc;
  }
  size_t tmp_len = strlen(path) + 5;
  char *tmp = malloc(tmp_len);
  if (!tmp) {
    free(h.buf);
    return F2_FAIL(F2_ERR_MEM, "out of host memory");
  }
  snprintf(tmp, tmp_len, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    rc = F2_FAIL(F2_ERR_IO, "safetensors save '%s': cannot create '%s': %s", path, tmp, strerror(errno));
    free(h.buf);
    free(tmp);
    return rc;
  }
  uint8_t len_le[8];
  for (int i = 0; i < 8; i++) len_le[i] = (uint8_t)((uint64_t)h.len >> (8 * i));
  int wrc = fwrite(len_le, 1, 8, f) == 8 && fwrite(h.buf, 1, h.len, f) == h.len ? 0 : -1;
  for (int64_t i = 0; wrc == 0 && i < count; i++) wrc = write_tensor(f, tensors[i]);
  if (wrc == 0 && (fflush(f) != 0 || fsync(fileno(f)) != 0)) wrc = -1;
  int saved_errno = errno;
  if (fclose(f) != 0 && wrc == 0) wrc = -1, saved_errno = errno;
  if (wrc == 0 && rename(tmp, path) != 0) wrc = -1, saved_errno = errno;
  if (wrc == 0) {
    sync_parent_dir(path);
  } else {
    unlink(tmp);
    rc = wrc == -2 ? F2_FAIL(F2_ERR_MEM, "out of host memory writing '%s'", path)
                   : F2_FAIL(F2_ERR_IO, "safetensors save '%s': write failed: %s", path, strerror(saved_errno));
  }
  free(h.buf);
  free(tmp);
  return rc;
}
