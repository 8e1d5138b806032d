/* gguf.c — a GGUF (v2/v3, little-endian) reader: metadata, tensor infos, zero-copy views of F32/F16/BF16
 * tensors and dequantization of Q8_0/Q4_0/Q4_1 into f32 or bf16; plus the row un-permutation that
 * turns llama.cpp's rotary layout of q/k back into the Hugging Face one.
 *
 * Layout: "GGUF", u32 version, u64 tensor count, u64 metadata count, metadata (string key, u32 type,
 * value), tensor infos (string name, u32 n_dims, u64 ne[n_dims] innermost first, u32 ggml type,
 * u64 offset), padding to general.alignment (default 32), tensor data. Strings are u64 length + bytes.
 * Every length, count and offset is checked against the file before use: a lying header gets an
 * error naming the file, the byte and the item, never a read out of bounds. */
#include "f2_mmap.h"

#include <stdio.h>

#if defined(__GNUC__) && !defined(__clang__)
/* d * q + m must round twice (product, then sum), as gguf-py's numpy does, never as one fused FMA. */
#pragma GCC optimize("fp-contract=off")
#endif

enum {
  GG_UINT8 = 0, GG_INT8, GG_UINT16, GG_INT16, GG_UINT32, GG_INT32, GG_FLOAT32, GG_BOOL, GG_STRING, GG_ARRAY,
  GG_UINT64, GG_INT64, GG_FLOAT64, GG_TYPE_COUNT
};
static const uint8_t value_size[GG_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
static const char *const value_type_name[GG_TYPE_COUNT] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                                           "bool", "string", "array", "u64", "i64", "f64"};

/* ggml tensor types: elements per block and bytes per block (gguf-py's GGML_QUANT_SIZES), so even
 * types fairy2 cannot decode are bounds-checked. */
enum { GT_F32 = 0, GT_F16 = 1, GT_Q4_0 = 2, GT_Q4_1 = 3, GT_Q8_0 = 8, GT_I8 = 24, GT_I32 = 26, GT_I64 = 27, GT_BF16 = 30 };
static const struct { int32_t type; const char *name; uint32_t block, bytes; } ggml_types[] = {
    {0, "F32", 1, 4},          {1, "F16", 1, 2},         {2, "Q4_0", 32, 18},     {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},       {7, "Q5_1", 32, 24},      {8, "Q8_0", 32, 34},     {10, "Q2_K", 256, 84},
    {11, "Q3_K", 256, 110},    {12, "Q4_K", 256, 144},   {13, "Q5_K", 256, 176},  {14, "Q6_K", 256, 210},
    {15, "Q8_K", 256, 292},    {16, "IQ2_XXS", 256, 66}, {17, "IQ2_XS", 256, 74}, {18, "IQ3_XXS", 256, 98},
    {19, "IQ1_S", 256, 50},    {20, "IQ4_NL", 32, 18},   {21, "IQ3_S", 256, 110}, {22, "IQ2_S", 256, 82},
    {23, "IQ4_XS", 256, 136},  {24, "I8", 1, 1},         {25, "I16", 1, 2},       {26, "I32", 1, 4},
    {27, "I64", 1, 8},         {28, "F64", 1, 8},        {29, "IQ1_M", 256, 56},  {30, "BF16", 1, 2},
    {34, "TQ1_0", 256, 54},    {35, "TQ2_0", 256, 66},   {39, "MXFP4", 32, 17},
};

static int ggml_type_index(int64_t type) {
  for (int i = 0; i < (int)(sizeof ggml_types / sizeof *ggml_types); i++)
    if (ggml_types[i].type == type) return i;
  return -1;
}

const char *f2_gguf_type_name(int32_t ggml_type) {
  int i = ggml_type_index(ggml_type);
  return i < 0 ? "unknown" : ggml_types[i].name;
}

typedef struct {
  char *key;
  int32_t type;
  int32_t elem_type;      /* arrays: the element type; -1 otherwise */
  int64_t count;          /* arrays: elements; scalars: 1 */
  size_t offset;          /* file offset of the value, or of the first element */
  size_t *str_offsets;    /* string arrays: file offset of each string's length prefix */
} gg_kv;

typedef struct {
  char *name;
  int32_t type;
  int32_t ndim;
  int64_t shape[4];       /* row-major (ne reversed), as f2 tensors have it */
  size_t offset;          /* absolute file offset */
  size_t nbytes;
} gg_tensor;

struct f2_gguf {
  char *path;
  f2_mapping *map;
  uint32_t version;
  uint32_t alignment;
  gg_kv *kvs;
  int64_t kv_count;
  gg_tensor *tensors;
  int64_t tensor_count;
};

/* ---------------------------------------------------------------- bounds-checked reading */
typedef struct {
  const f2_gguf *g;
  const uint8_t *b;
  size_t size, pos;
  char what[192];         /* what is being read, for messages */
} cursor;

static int truncated(const cursor *c, const char *part) {
  return F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': truncated at byte %zu reading %s of %s (file is %zu bytes)",
                 c->g->path, c->pos, part, c->what, c->size);
}

static uint64_t load_le(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

/* Outputs are zeroed on failure too, so no caller ever sees an unset value. */
static int rd_u32(cursor *c, uint32_t *out, const char *part) {
  *out = 0;
  if (c->size - c->pos < 4) return truncated(c, part);
  *out = (uint32_t)load_le(c->b + c->pos, 4);
  c->pos += 4;
  return F2_OK;
}

static int rd_u64(cursor *c, uint64_t *out, const char *part) {
  *out = 0;
  if (c->size - c->pos < 8) return truncated(c, part);
  *out = load_le(c->b + c->pos, 8);
  c->pos += 8;
  return F2_OK;
}

/* A string: u64 length, then that many bytes, all inside the file. */
static int rd_str(cursor *c, const uint8_t **s, uint64_t *len, const char *part) {
  size_t at = c->pos;
  *s = c->b;
  F2_TRY(rd_u64(c, len, part));
  if (*len > c->size - c->pos)
    return F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': %s of %s at byte %zu has length %llu, beyond the end of the file "
                   "(%zu bytes)", c->g->path, part, c->what, at, (unsigned long long)*len, c->size);
  *s = c->b + c->pos;
  c->pos += (size_t)*len;
  return F2_OK;
}

/* A NUL-terminated copy of a key or tensor name (which must not hold NUL bytes). */
static int rd_name(cursor *c, char **out, const char *part) {
  const uint8_t *s;
  uint64_t len;
  F2_TRY(rd_str(c, &s, &len, part));
  if (memchr(s, 0, (size_t)len))
    return F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': %s of %s contains a NUL byte", c->g->path, part, c->what);
  *out = malloc((size_t)len + 1);
  if (!*out) return F2_FAIL(F2_ERR_MEM, "out of host memory");
  memcpy(*out, s, (size_t)len);
  (*out)[len] = 0;
  return F2_OK;
}

static int read_value(cursor *c, gg_kv *kv) {
  uint32_t type;
  F2_TRY(rd_u32(c, &type, "the value type"));
  if (type >= GG_TYPE_COUNT)
    return F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': %s has unknown value type %u", c->g->path, c->what, type);
  kv->type = (int32_t)type;
  kv->elem_type = -1;
  kv->count = 1;
  kv->offset = c->pos;
  if (type == GG_STRING) {
    const uint8_t *s;
    uint64_t len;
    return rd_str(c, &s, &len, "the string value");
  }
  if (type != GG_ARRAY) {
    if (c->size - c->pos < value_size[type]) return truncated(c, "the value");
    c->pos += value_size[type];
    return F2_OK;
  }
  uint32_t elem;
  uint64_t count;
  F2_TRY(rd_u32(c, &elem, "the array element type"));
  F2_TRY(rd_u64(c, &count, "the array length"));
  if (elem >= GG_TYPE_COUNT)
    return F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': %s is an array of unknown value type %u", c->g->path, c->what, elem);
  if (elem == GG_ARRAY)
    return F2_FAIL(F2_ERR_UNSUPPORTED, "GGUF file '%s': %s is an array of arrays, which fairy2 does not read",
                   c->g->path, c->what);
  kv->elem_type = (int32_t)elem;
  kv->count = (int64_t)count;
  kv->offset = c->pos;
  size_t left = c->size - c->pos;
  size_t min_size = elem == GG_STRING ? 8 : value_size[elem];
  if (count > left / min_size)
    return F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': %s claims %llu elements of type %s at byte %zu; the %zu bytes "
                   "left in the file cannot hold them", c->g->path, c->what, (unsigned long long)count,
                   value_type_name[elem], c->pos, left);
  if (elem != GG_STRING) {
    c->pos += (size_t)count * min_size;
    return F2_OK;
  }
  kv->str_offsets = malloc((size_t)(count ? count : 1) * sizeof *kv->str_offsets);
  if (!kv->str_offsets) return F2_FAIL(F2_ERR_MEM, "out of host memory");
  for (uint64_t j = 0; j < count; j++) {
    const uint8_t *s;
    uint64_t len;
    kv->str_offsets[j] = c->pos;
    F2_TRY(rd_str(c, &s, &len, "an array string"));
  }
  return F2_OK;
}

static int read_tensor_info(cursor *c, gg_tensor *t) {
  F2_TRY(rd_name(c, &t->name, "the name"));
  snprintf(c->what, sizeof c->what, "tensor '%.64s'", t->name);
  uint32_t ndim, type;
  F2_TRY(rd_u32(c, &ndim, "the number of dims"));
  if (ndim < 1 || ndim > 4)
    return F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': %s has %u dims (1 to 4 allowed)", c->g->path, c->what, ndim);
  t->ndim = (int32_t)ndim;
  uint64_t numel = 1;
  for (uint32_t d = 0; d < ndim; d++) {
    uint64_t ne;
    F2_TRY(rd_u64(c, &ne, "a dim"));
    if (ne > (uint64_t)INT64_MAX || (ne && numel > (uint64_t)INT64_MAX / ne))
      return F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': %s: dims too large", c->g->path, c->what);
    numel *= ne;
    t->shape[ndim - 1 - d] = (int64_t)ne;
  }
  F2_TRY(rd_u32(c, &type, "the type"));
  int ti = ggml_type_index(type);
  if (ti < 0) return F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': %s has unknown ggml type %u", c->g->path, c->what, type);
  t->type = (int32_t)type;
  uint64_t row = (uint64_t)t->shape[ndim - 1];
  if (row % ggml_types[ti].block)
    return F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': %s: rows of %llu elements are not whole %s blocks of %u",
                   c->g->path, c->what, (unsigned long long)row, ggml_types[ti].name, ggml_types[ti].block);
  t->nbytes = (size_t)(numel / ggml_types[ti].block * ggml_types[ti].bytes);
  uint64_t offset;
  F2_TRY(rd_u64(c, &offset, "the data offset"));
  if (offset > c->size) return F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': %s: data offset %llu is beyond the end of the file",
                                       c->g->path, c->what, (unsigned long long)offset);
  t->offset = (size_t)offset;   /* relative until the data start is known */
  return F2_OK;
}

static int compare_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Names must be unique: sort a copy of the pointers and look at neighbours. */
static int check_unique(const f2_gguf *g, char **names, int64_t n, const char *kind) {
  if (n < 2) return F2_OK;
  char **sorted = malloc((size_t)n * sizeof *sorted);
  if (!sorted) return F2_FAIL(F2_ERR_MEM, "out of host memory");
  memcpy(sorted, names, (size_t)n * sizeof *sorted);
  qsort(sorted, (size_t)n, sizeof *sorted, compare_str);
  int rc = F2_OK;
  for (int64_t i = 1; i < n && rc == F2_OK; i++)
    if (strcmp(sorted[i], sorted[i - 1]) == 0)
      rc = F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': %s '%.64s' appears twice", g->path, kind, sorted[i]);
  free(sorted);
  return rc;
}

static int parse(f2_gguf *g) {
  cursor c = {.g = g, .b = g->map->base, .size = g->map->size};
  snprintf(c.what, sizeof c.what, "the file header");
  uint32_t magic;
  uint64_t tensor_count, kv_count;
  if (g->map->size < 4 || memcmp(g->map->base, "GGUF", 4) != 0)
    return F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': bad magic (not a GGUF file)", g->path);
  F2_TRY(rd_u32(&c, &magic, "the magic"));
  F2_TRY(rd_u32(&c, &g->version, "the version"));
  if (g->version != 2 && g->version != 3)
    return F2_FAIL(F2_ERR_UNSUPPORTED, "GGUF file '%s': version %u is not supported (2 and 3 are)", g->path, g->version);
  F2_TRY(rd_u64(&c, &tensor_count, "the tensor count"));
  F2_TRY(rd_u64(&c, &kv_count, "the metadata count"));
  /* Each entry takes some minimum bytes, so a count the file cannot hold is a lie: refuse it before
   * allocating anything for it. */
  size_t left = c.size - c.pos;
  if (kv_count > left / 13)
    return F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': metadata count %llu cannot fit in the %zu bytes left", g->path,
                   (unsigned long long)kv_count, left);
  if (tensor_count > left / 32)
    return F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': tensor count %llu cannot fit in the %zu bytes left", g->path,
                   (unsigned long long)tensor_count, left);
  g->kvs = calloc((size_t)kv_count + 1, sizeof *g->kvs);
  g->tensors = calloc((size_t)tensor_count + 1, sizeof *g->tensors);
  if (!g->kvs || !g->tensors) return F2_FAIL(F2_ERR_MEM, "out of host memory");

  for (uint64_t i = 0; i < kv_count; i++) {
    gg_kv *kv = &g->kvs[i];
    snprintf(c.what, sizeof c.what, "metadata entry %llu", (unsigned long long)i);
    g->kv_count = (int64_t)i + 1;   /* so close() frees what this entry allocates */
    F2_TRY(rd_name(&c, &kv->key, "the key"));
    snprintf(c.what, sizeof c.what, "metadata '%.64s'", kv->key);
    F2_TRY(read_value(&c, kv));
  }
  char **names = malloc((size_t)(kv_count > tensor_count ? kv_count : tensor_count) * sizeof *names + 1);
  if (!names) return F2_FAIL(F2_ERR_MEM, "out of host memory");
  for (int64_t i = 0; i < g->kv_count; i++) names[i] = g->kvs[i].key;
  int rc = check_unique(g, names, g->kv_count, "metadata key");

  g->alignment = 32;
  int64_t ai = f2_gguf_metadata_find(g, "general.alignment");
  if (rc == F2_OK && ai >= 0) {
    const gg_kv *kv = &g->kvs[ai];
    uint32_t a = kv->type == GG_UINT32 ? (uint32_t)load_le(c.b + kv->offset, 4) : 0;
    if (a == 0 || (a & (a - 1)))
      rc = F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': general.alignment must be a power of two of type u32", g->path);
    g->alignment = a;
  }
  for (uint64_t i = 0; rc == F2_OK && i < tensor_count; i++) {
    snprintf(c.what, sizeof c.what, "tensor info %llu", (unsigned long long)i);
    g->tensor_count = (int64_t)i + 1;
    rc = read_tensor_info(&c, &g->tensors[i]);
    names[i] = g->tensors[i].name;
  }
  if (rc == F2_OK) rc = check_unique(g, names, g->tensor_count, "tensor");
  free(names);
  F2_TRY(rc);

  size_t data_start = (c.pos + g->alignment - 1) / g->alignment * g->alignment;
  for (int64_t i = 0; i < g->tensor_count; i++) {
    gg_tensor *t = &g->tensors[i];
    if (t->offset % g->alignment)
      return F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': tensor '%.64s': data offset %zu is not a multiple of the alignment %u",
                     g->path, t->name, t->offset, g->alignment);
    if (data_start > c.size || t->offset > c.size - data_start || t->nbytes > c.size - data_start - t->offset)
      return F2_FAIL(F2_ERR_FORMAT, "GGUF file '%s': tensor '%.64s': data [%zu, +%zu) goes beyond the end of the file "
                     "(%zu bytes; truncated?)", g->path, t->name, data_start + t->offset, t->nbytes, c.size);
    t->offset += data_start;
  }
  return F2_OK;
}

f2_gguf *f2_gguf_open(const char *path) {
  if (!path) return F2_FAIL_NULL(F2_ERR_ARG, "f2_gguf_open: path is NULL");
  f2_gguf *g = calloc(1, sizeof *g);
  if (!g || !(g->path = strdup(path))) {
    free(g);
    return F2_FAIL_NULL(F2_ERR_MEM, "out of host memory");
  }
  g->map = f2_mapping_open(path, "GGUF");
  if (!g->map || parse(g) != F2_OK) {
    f2_gguf_close(g);
    return NULL;
  }
  return g;
}

void f2_gguf_close(f2_gguf *g) {
  if (!g) return;
  f2_mapping_release(g->map);   /* tensor views still hold the mapping */
  for (int64_t i = 0; g->kvs && i < g->kv_count; i++) {
    free(g->kvs[i].key);
    free(g->kvs[i].str_offsets);
  }
  for (int64_t i = 0; g->tensors && i < g->tensor_count; i++) free(g->tensors[i].name);
  free(g->kvs);
  free(g->tensors);
  free(g->path);
  free(g);
}

uint32_t f2_gguf_version(const f2_gguf *g) { return g ? g->version : 0; }
uint32_t f2_gguf_alignment(const f2_gguf *g) { return g ? g->alignment : 0; }

/* ---------------------------------------------------------------- metadata */
int64_t f2_gguf_metadata_count(const f2_gguf *g) { return g ? g->kv_count : 0; }

static const gg_kv *kv_at(const f2_gguf *g, int64_t i) {
  if (!g) return F2_FAIL_NULL(F2_ERR_ARG, "GGUF handle is NULL");
  if (i < 0 || i >= g->kv_count)
    return F2_FAIL_NULL(F2_ERR_ARG, "GGUF file '%s': metadata index %lld outside 0..%lld", g->path, (long long)i,
                        (long long)g->kv_count - 1);
  return &g->kvs[i];
}

const char *f2_gguf_metadata_key(const f2_gguf *g, int64_t i) {
  const gg_kv *kv = kv_at(g, i);
  return kv ? kv->key : NULL;
}

int64_t f2_gguf_metadata_find(const f2_gguf *g, const char *key) {
  for (int64_t i = 0; g && key && i < g->kv_count; i++)
    if (strcmp(g->kvs[i].key, key) == 0) return i;
  return -1;
}

int32_t f2_gguf_metadata_type(const f2_gguf *g, int64_t i) {
  const gg_kv *kv = kv_at(g, i);
  return kv ? kv->type : -1;
}

int32_t f2_gguf_metadata_array_type(const f2_gguf *g, int64_t i) {
  const gg_kv *kv = kv_at(g, i);
  return kv ? kv->elem_type : -1;
}

int64_t f2_gguf_metadata_array_count(const f2_gguf *g, int64_t i) {
  const gg_kv *kv = kv_at(g, i);
  return kv && kv->type == GG_ARRAY ? kv->count : -1;
}

/* The j-th value of entry i (j = 0 for a scalar): its type and file offset. */
static int element(const f2_gguf *g, int64_t i, int64_t j, int32_t *type, size_t *offset) {
  const gg_kv *kv = kv_at(g, i);
  if (!kv) return F2_ERR_ARG;
  if (j < 0 || j >= kv->count)
    return F2_FAIL(F2_ERR_ARG, "GGUF file '%s': metadata '%s': element %lld outside 0..%lld", g->path, kv->key,
                   (long long)j, (long long)kv->count - 1);
  *type = kv->type == GG_ARRAY ? kv->elem_type : kv->type;
  if (*type == GG_STRING) *offset = kv->type == GG_ARRAY ? kv->str_offsets[j] : kv->offset;
  else *offset = kv->offset + (size_t)j * value_size[*type];
  return F2_OK;
}

int f2_gguf_metadata_number(double *out, const f2_gguf *g, int64_t i, int64_t j) {
  int32_t type = -1;
  size_t off = 0;
  F2_TRY(element(g, i, j, &type, &off));
  const uint8_t *p = g->map->base + off;
  uint64_t raw = type == GG_STRING ? 0 : load_le(p, value_size[type]);
  switch (type) {
    case GG_UINT8: case GG_UINT16: case GG_UINT32: case GG_UINT64: *out = (double)raw; break;
    case GG_BOOL: *out = raw != 0; break;
    case GG_INT8: *out = (int8_t)raw; break;
    case GG_INT16: *out = (int16_t)raw; break;
    case GG_INT32: *out = (int32_t)raw; break;
    case GG_INT64: *out = (double)(int64_t)raw; break;
    case GG_FLOAT32: { uint32_t u = (uint32_t)raw; float f; memcpy(&f, &u, 4); *out = f; break; }
    case GG_FLOAT64: { double d; memcpy(&d, &raw, 8); *out = d; break; }
    default:
      return F2_FAIL(F2_ERR_ARG, "GGUF file '%s': metadata '%s' holds %s, not a number", g->path, g->kvs[i].key,
                     value_type_name[type]);
  }
  return F2_OK;
}

int f2_gguf_metadata_string(const char **str, int64_t *len, const f2_gguf *g, int64_t i, int64_t j) {
  int32_t type = -1;
  size_t off = 0;
  F2_TRY(element(g, i, j, &type, &off));
  if (type != GG_STRING)
    return F2_FAIL(F2_ERR_ARG, "GGUF file '%s': metadata '%s' holds %s, not a string", g->path, g->kvs[i].key,
                   value_type_name[type]);
  *len = (int64_t)load_le(g->map->base + off, 8);   /* checked against the file when opened */
  *str = (const char *)g->map->base + off + 8;
  return F2_OK;
}

const char *f2_gguf_value_type_name(int32_t type) {
  return type >= 0 && type < GG_TYPE_COUNT ? value_type_name[type] : "unknown";
}

/* ---------------------------------------------------------------- tensors */
int64_t f2_gguf_tensor_count(const f2_gguf *g) { return g ? g->tensor_count : 0; }

static const gg_tensor *tensor_at(const f2_gguf *g, int64_t i) {
  if (!g) return F2_FAIL_NULL(F2_ERR_ARG, "GGUF handle is NULL");
  if (i < 0 || i >= g->tensor_count)
    return F2_FAIL_NULL(F2_ERR_ARG, "GGUF file '%s': tensor index %lld outside 0..%lld", g->path, (long long)i,
                        (long long)g->tensor_count - 1);
  return &g->tensors[i];
}

const char *f2_gguf_tensor_name(const f2_gguf *g, int64_t i) {
  const gg_tensor *t = tensor_at(g, i);
  return t ? t->name : NULL;
}

int64_t f2_gguf_tensor_find(const f2_gguf *g, const char *name) {
  for (int64_t i = 0; g && name && i < g->tensor_count; i++)
    if (strcmp(g->tensors[i].name, name) == 0) return i;
  return -1;
}

int32_t f2_gguf_tensor_type(const f2_gguf *g, int64_t i) {
  const gg_tensor *t = tensor_at(g, i);
  return t ? t->type : -1;
}

int32_t f2_gguf_tensor_shape(int64_t *shape, const f2_gguf *g, int64_t i) {
  const gg_tensor *t = tensor_at(g, i);
  if (!t) return F2_ERR_ARG;
  for (int32_t d = 0; d < t->ndim; d++) shape[d] = t->shape[d];
  return t->ndim;
}

static float half_at(const uint8_t *p) { return f2_f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

/* n elements (whole blocks) stored as `type`, decoded to f32. */
static void decode(float *out, const uint8_t *src, int32_t type, int64_t n) {
  switch (type) {
    case GT_F32: memcpy(out, src, (size_t)n * 4); break;
    case GT_F16: for (int64_t k = 0; k < n; k++) out[k] = half_at(src + 2 * k); break;
    case GT_BF16: for (int64_t k = 0; k < n; k++) out[k] = f2_bf16_to_f32((uint16_t)(src[2 * k] | src[2 * k + 1] << 8)); break;
    case GT_Q8_0:   /* 34 bytes: f16 d, 32 x int8 q; x = d * q */
      for (int64_t b = 0; b < n / 32; b++, src += 34, out += 32) {
        float d = half_at(src);
        for (int j = 0; j < 32; j++) out[j] = (float)(int8_t)src[2 + j] * d;
      }
      break;
    case GT_Q4_0:   /* 18 bytes: f16 d, 16 bytes of nibbles (low: elements 0-15, high: 16-31); x = d * (q - 8) */
      for (int64_t b = 0; b < n / 32; b++, src += 18, out += 32) {
        float d = half_at(src);
        for (int j = 0; j < 16; j++) {
          out[j] = d * (float)((src[2 + j] & 0xf) - 8);
          out[j + 16] = d * (float)((src[2 + j] >> 4) - 8);
        }
      }
      break;
    case GT_Q4_1:   /* 20 bytes: f16 d, f16 m, 16 bytes of nibbles; x = d * q + m */
      for (int64_t b = 0; b < n / 32; b++, src += 20, out += 32) {
        float d = half_at(src), m = half_at(src + 2);
        for (int j = 0; j < 16; j++) {
          float lo = d * (float)(src[4 + j] & 0xf), hi = d * (float)(src[4 + j] >> 4);
          out[j] = lo + m;
          out[j + 16] = hi + m;
        }
      }
      break;
  }
}

f2_tensor *f2_gguf_tensor(const f2_gguf *g, int64_t i, int32_t dtype) {
  const gg_tensor *t = tensor_at(g, i);
  if (!t) return NULL;
  int32_t native = t->type == GT_F32 ? F2_F32 : t->type == GT_F16 ? F2_F16 : t->type == GT_BF16 ? F2_BF16
                 : t->type == GT_I8 ? F2_I8 : t->type == GT_I32 ? F2_I32 : t->type == GT_I64 ? F2_I64 : -1;
  int quantized = t->type == GT_Q8_0 || t->type == GT_Q4_0 || t->type == GT_Q4_1;
  if (native < 0 && !quantized)
    return F2_FAIL_NULL(F2_ERR_UNSUPPORTED, "GGUF file '%s': tensor '%s' has type %s, which fairy2 does not decode "
                        "(F32, F16, BF16, Q8_0, Q4_0, Q4_1, I8, I32, I64 are)", g->path, t->name,
                        f2_gguf_type_name(t->type));
  if (dtype < 0) dtype = quantized ? F2_F32 : native;
  if (dtype == native) {
    if (t->offset % f2_dtype_size(dtype) == 0) return f2_mapping_view(g->map, t->offset, dtype, t->ndim, t->shape);
    f2_tensor *copy = f2_tensor_new(dtype, F2_CPU, t->ndim, t->shape);   /* alignment < element size */
    if (copy) memcpy(copy->data, g->map->base + t->offset, t->nbytes);
    return copy;
  }
  int is_float = quantized || native == F2_F32 || native == F2_F16 || native == F2_BF16;
  if (!is_float || (dtype != F2_F32 && dtype != F2_BF16))
    return F2_FAIL_NULL(F2_ERR_ARG, "GGUF file '%s': tensor '%s' (%s) cannot be read as %s (as stored, f32 or bf16 "
                        "for float and quantized types)", g->path, t->name, f2_gguf_type_name(t->type),
                        f2_dtype_name(dtype));
  f2_tensor *out = f2_tensor_new(dtype, F2_CPU, t->ndim, t->shape);
  if (!out) return NULL;
  int64_t n = f2_tensor_numel(out);
  if (dtype == F2_F32) {
    decode(out->data, g->map->base + t->offset, t->type, n);
    return out;
  }
  /* bf16: decode a row of blocks at a time into a small f32 buffer, then round. */
  float buf[1024];
  const int64_t chunk = 1024;   /* a multiple of every block size we decode */
  int ti = ggml_type_index(t->type);
  uint16_t *dst = out->data;
  for (int64_t k = 0; k < n; k += chunk) {
    int64_t m = n - k < chunk ? n - k : chunk;
    decode(buf, g->map->base + t->offset + (size_t)(k / ggml_types[ti].block) * ggml_types[ti].bytes, t->type, m);
    for (int64_t j = 0; j < m; j++) dst[k + j] = f2_f32_to_bf16(buf[j]);
  }
  return out;
}

int f2_gguf_unpermute_rows(f2_tensor *out, const f2_tensor *in, int32_t n_head) {
  if (!out || !in) return F2_FAIL(F2_ERR_ARG, "f2_gguf_unpermute_rows: NULL tensor");
  if (out->device != F2_CPU || in->device != F2_CPU || !f2_tensor_is_contiguous(out) || !f2_tensor_is_contiguous(in))
    return F2_FAIL(F2_ERR_ARG, "f2_gguf_unpermute_rows: tensors must be contiguous CPU tensors");
  if (in->ndim < 1 || in->ndim > 2) return F2_FAIL(F2_ERR_ARG, "f2_gguf_unpermute_rows: needs a 1-D or 2-D tensor");
  if (out->dtype != in->dtype || out->ndim != in->ndim || out->shape[0] != in->shape[0] ||
      (in->ndim == 2 && out->shape[1] != in->shape[1]))
    return F2_FAIL(F2_ERR_ARG, "f2_gguf_unpermute_rows: out and in differ in dtype or shape");
  if (out->data == in->data) return F2_FAIL(F2_ERR_ARG, "f2_gguf_unpermute_rows: out and in must not overlap");
  int64_t rows = in->shape[0];
  if (n_head < 1 || rows % (2 * (int64_t)n_head))
    return F2_FAIL(F2_ERR_ARG, "f2_gguf_unpermute_rows: %lld rows do not split into %d heads of an even size",
                   (long long)rows, (int)n_head);
  size_t row_bytes = (in->ndim == 2 ? (size_t)in->shape[1] : 1) * f2_dtype_size(in->dtype);
  int64_t half = rows / n_head / 2;
  /* Per head, llama.cpp stored HF row s * half + r (s = 0, 1) at row 2 * r + s. */
  for (int64_t h = 0; h < n_head; h++)
    for (int64_t s = 0; s < 2; s++)
      for (int64_t r = 0; r < half; r++)
        memcpy((uint8_t *)out->data + (size_t)(h * 2 * half + s * half + r) * row_bytes,
               (const uint8_t *)in->data + (size_t)(h * 2 * half + 2 * r + s) * row_bytes, row_bytes);
  return F2_OK;
}
