/* tokenizer.c — byte-level BPE (GPT-2 family: SmolLM2, Qwen2/3), exact with Hugging Face tokenizers.
 *
 * encode: text -> invalid UTF-8 replaced by U+FFFD (as Python's decode(errors="replace") and Rust's
 * from_utf8_lossy do) -> added tokens split out (non-normalized ones on the raw text, then NFC when
 * asked, then normalized ones) -> pre-tokenizer (hand-written matchers of the GPT-2 / Qwen2 regexes,
 * SmolLM2's digit split) -> BPE over each pre-token's bytes -> ids.
 * decode: ids -> each token's bytes (byte-level inverse map), concatenated; no UTF-8 repair.
 * The tokenizer is immutable once built: encode and decode may run on many threads at once.
 * docs/tokenizer.md says what is supported and how it was checked. */
#include "f2_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "unicode_tables.h"

/* ---------------------------------------------------------------- hash maps */

/* Token strings and pre-tokens are short: 8 bytes a step, then a final mix. */
static inline uint64_t hash_bytes(const uint8_t *s, size_t n) {
  uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
  for (; n >= 8; n -= 8, s += 8) {
    uint64_t w;
    memcpy(&w, s, 8);
    h = (h ^ w) * 0xff51afd7ed558ccdull;
    h ^= h >> 32;
  }
  uint64_t w = 0;
  for (size_t i = 0; i < n; i++) w |= (uint64_t)s[i] << (8 * i);
  h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
  return h ^ (h >> 29);
}

static inline int bytes_equal(const uint8_t *a, const uint8_t *b, size_t n) {
  for (; n >= 8; n -= 8, a += 8, b += 8) {
    uint64_t x, y;
    memcpy(&x, a, 8);
    memcpy(&y, b, 8);
    if (x != y) return 0;
  }
  for (size_t i = 0; i < n; i++)
    if (a[i] != b[i]) return 0;
  return 1;
}

static uint64_t hash_u64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return x;
}

static uint32_t table_size_for(int64_t n) {
  uint32_t size = 16;
  while (size < 2 * n + 16) size *= 2;
  return size;
}

typedef struct merge_entry {
  uint64_t pair;      /* left id << 32 | right id; UINT64_MAX = empty slot */
  uint32_t rank;
  int32_t merged_id;
} merge_entry;

/* ---------------------------------------------------------------- the tokenizer */

typedef struct added_token {
  int64_t off;           /* its text (NUL-terminated) in the blob */
  int32_t len;
  int32_t id;
  uint8_t first;         /* its first byte, for sorting */
} added_token;

/* A set of added tokens to split out, longest first within each first byte. */
typedef struct added_set {
  added_token *tokens;
  int32_t count;
  int32_t first[257];    /* tokens[first[b] .. first[b+1]) start with byte b */
} added_set;

struct f2_tokenizer {
  uint64_t serial;               /* unique per tokenizer built, for the word caches */
  int32_t n_ids;                 /* ids are 0 .. n_ids-1 */
  int32_t pretokenizer, nfc, ignore_merges, fuse_unk;
  int32_t special_ids[4];        /* F2_TOKEN_BOS, _EOS, _PAD, _UNK; -1 when none */
  uint8_t *blob;                 /* every string the tokenizer keeps */
  int64_t *vocab_off;            /* model vocab string of id (as given), -1 when none */
  int32_t *vocab_len;
  int64_t *name_off;             /* id_to_token's string: added content, else vocab string; -1: none */
  int64_t *decode_off;           /* the bytes decode writes for id, -1 when the id has no token */
  int32_t *decode_len;
  uint8_t *is_special;
  int32_t *vocab_slots;          /* open addressing over vocab strings: id or -1 */
  uint32_t vocab_mask;
  merge_entry *merges;
  uint32_t merge_mask;
  int32_t byte_id[256];          /* id of the one-byte token of each byte, -1 when the vocab lacks it */
  uint8_t byte_utf8[256][3];     /* each byte's character in UTF-8: length, then the bytes */
  added_set raw_added, normalized_added;
  added_token *all_added;        /* for token_to_id: added tokens win over the model vocab, as in HF */
  int32_t n_added;
};

/* GPT-2's byte <-> printable character map: bytes that are printable Latin-1 map to themselves,
 * the other 68 to U+0100.. in byte order, so every byte has a visible, non-space character. */
static uint32_t byte_to_char(int b) {
  if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)) return (uint32_t)b;
  int n = 0;
  for (int c = 0; c < b; c++)
    if (!((c >= 0x21 && c <= 0x7e) || (c >= 0xa1 && c <= 0xac) || (c >= 0xae && c <= 0xff))) n++;
  return 0x100u + (uint32_t)n;
}

static int utf8_put(uint8_t *out, uint32_t cp) {
  if (cp < 0x80) { out[0] = (uint8_t)cp; return 1; }
  if (cp < 0x800) { out[0] = (uint8_t)(0xc0 | cp >> 6); out[1] = (uint8_t)(0x80 | (cp & 0x3f)); return 2; }
  if (cp < 0x10000) {
    out[0] = (uint8_t)(0xe0 | cp >> 12); out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
    out[2] = (uint8_t)(0x80 | (cp & 0x3f));
    return 3;
  }
  out[0] = (uint8_t)(0xf0 | cp >> 18); out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
  out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f)); out[3] = (uint8_t)(0x80 | (cp & 0x3f));
  return 4;
}

/* Length of the valid UTF-8 sequence at s[0..n) (the byte ranges of Unicode's table 3-7), or minus
 * the length of its maximal invalid subpart: the lead byte and the continuation bytes that were
 * still acceptable, which is what one U+FFFD replaces in Python's decode and Rust's from_utf8_lossy. */
static int utf8_len(const uint8_t *s, int64_t n) {
  uint8_t b = s[0];
  if (b < 0x80) return 1;
  int len;
  uint8_t lo = 0x80, hi = 0xbf;
  if (b >= 0xc2 && b <= 0xdf) len = 2;
  else if (b >= 0xe0 && b <= 0xef) { len = 3; if (b == 0xe0) lo = 0xa0; if (b == 0xed) hi = 0x9f; }
  else if (b >= 0xf0 && b <= 0xf4) { len = 4; if (b == 0xf0) lo = 0x90; if (b == 0xf4) hi = 0x8f; }
  else return -1;
  if (n < 2 || s[1] < lo || s[1] > hi) return -1;
  int i = 2;
  while (i < len && i < n && s[i] >= 0x80 && s[i] <= 0xbf) i++;
  return i == len ? len : -i;
}

/* Decodes the (valid) UTF-8 character at s; returns its length. */
static inline int utf8_get(const uint8_t *s, uint32_t *cp) {
  uint8_t b = s[0];
  if (b < 0x80) { *cp = b; return 1; }
  if (b < 0xe0) { *cp = (uint32_t)(b & 0x1f) << 6 | (s[1] & 0x3f); return 2; }
  if (b < 0xf0) { *cp = (uint32_t)(b & 0x0f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 | (s[2] & 0x3f); return 3; }
  *cp = (uint32_t)(b & 0x07) << 18 | (uint32_t)(s[1] & 0x3f) << 12 | (uint32_t)(s[2] & 0x3f) << 6 | (s[3] & 0x3f);
  return 4;
}

/* The bytes a token string stands for: its characters through the inverse byte map when all of
 * them are in it, else the string's own UTF-8 (what HF's ByteLevel decoder does). Returns the
 * length written to out (at most strlen(s)). */
static int32_t token_bytes(uint8_t *out, const uint8_t *s, int32_t n, const int16_t *char_to_byte) {
  int32_t k = 0;
  for (int32_t i = 0; i < n;) {
    int l = utf8_len(s + i, n - i);
    uint32_t cp = 0;
    if (l > 0) utf8_get(s + i, &cp);
    if (l < 0 || cp >= 0x144 || char_to_byte[cp] < 0) {
      memcpy(out, s, (size_t)n);
      return n;
    }
    out[k++] = (uint8_t)char_to_byte[cp];
    i += l;
  }
  return k;
}

/* ---------------------------------------------------------------- character classes */

enum { CLS_L = F2U_LETTER, CLS_N = F2U_NUMBER, CLS_NUMERIC = F2U_NUMERIC, CLS_WS = 8 };

/* Oniguruma's \s: the White_Space property. */
static int is_space(uint32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0d);
  return c == 0x85 || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 ||
         c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

static int range3_find(const uint32_t (*r)[3], int n, uint32_t c) {
  int lo = 0, hi = n - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (c < r[mid][0]) hi = mid - 1;
    else if (c > r[mid][1]) lo = mid + 1;
    else return (int)r[mid][2];
  }
  return 0;
}

static inline int char_class(uint32_t c) {
  if (c < 0x80) {
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return CLS_L;
    if (c >= '0' && c <= '9') return CLS_N | CLS_NUMERIC;
    return is_space(c) ? CLS_WS : 0;
  }
  if (is_space(c)) return CLS_WS;
  return range3_find(f2u_class_ranges, (int)(sizeof f2u_class_ranges / sizeof *f2u_class_ranges), c);
}

/* Class of the character at t[i] (i < e), its length in *len. */
static inline int class_at(const uint8_t *t, int64_t i, int *len) {
  uint32_t c;
  *len = utf8_get(t + i, &c);
  return char_class(c);
}

/* ---------------------------------------------------------------- pre-tokenizers
 * Each matcher returns the end of the regex match that starts at i in t[.. e): the regexes cover
 * every character, so matches tile the text. Alternatives are tried in the regex's order, the way
 * a backtracking engine (Oniguruma, which HF uses) would; the comments give each alternative. */

/* 's 't 're 've 'm 'll 'd after the apostrophe at t[i]; ci: case-insensitive, where Unicode case
 * folding also lets U+017F LATIN SMALL LETTER LONG S match s (Qwen2's (?i:...)). */
static int64_t contraction(const uint8_t *t, int64_t i, int64_t e, int ci) {
  int64_t j = i + 1;
  if (j >= e) return 0;
  uint8_t a = t[j], b = j + 1 < e ? t[j + 1] : 0;
  if (ci) {
    if (a == 0xc5 && b == 0xbf) return j + 2;   /* long s */
    if (a < 0x80) a |= 0x20;
    if (b < 0x80 && b >= 'A') b |= 0x20;
  }
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return j + 1;
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return j + 2;
  return 0;
}

/* End of the run of characters at i having (want != 0) / lacking (want == 0) any class in mask. */
static int64_t run_end(const uint8_t *t, int64_t i, int64_t e, int mask, int want) {
  while (i < e) {
    int len, cls = class_at(t, i, &len);
    if (((cls & mask) != 0) != want) break;
    i += len;
  }
  return i;
}

/* \s+(?!\S)|\s+ at a whitespace character: the run, less its last character when a non-space
 * follows and the run has more than one character. */
static int64_t space_run(const uint8_t *t, int64_t i, int64_t e) {
  int64_t last = i, k = i;
  while (k < e) {
    int len, cls = class_at(t, k, &len);
    if (!(cls & CLS_WS)) break;
    last = k;
    k += len;
  }
  return (k < e && last > i) ? last : k;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static int64_t gpt2_match(const uint8_t *t, int64_t i, int64_t e) {
  if (t[i] == '\'') {
    int64_t k = contraction(t, i, e, 0);
    if (k) return k;
  }
  int64_t j = (t[i] == ' ' && i + 1 < e) ? i + 1 : i;   /* the optional space, if what follows fits */
  int len, cls = class_at(t, j, &len);
  if (j != i && (cls & CLS_WS)) {   /* a space before a space: no optional-space alternative fits */
    j = i;
    cls = CLS_WS;
  }
  if (cls & CLS_L) return run_end(t, j, e, CLS_L, 1);
  if (cls & CLS_N) return run_end(t, j, e, CLS_N, 1);
  if (!(cls & CLS_WS)) return run_end(t, j, e, CLS_L | CLS_N | CLS_WS, 0);
  return space_run(t, i, e);
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|
 * \s+(?!\S)|\s+ */
static int64_t qwen2_match(const uint8_t *t, int64_t i, int64_t e) {
  if (t[i] == '\'') {
    int64_t k = contraction(t, i, e, 1);
    if (k) return k;
  }
  int len, cls = class_at(t, i, &len);
  if (cls & CLS_L) return run_end(t, i, e, CLS_L, 1);
  if (cls & CLS_N) return i + len;
  /* [^\r\n\p{L}\p{N}]?\p{L}+ with the optional character taken */
  if (t[i] != '\r' && t[i] != '\n' && i + len < e) {
    int len2, cls2 = class_at(t, i + len, &len2);
    if (cls2 & CLS_L) return run_end(t, i + len, e, CLS_L, 1);
  }
  /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
  int64_t j = -1;
  if (!(cls & CLS_WS)) j = i;
  else if (t[i] == ' ' && i + 1 < e) {
    int len2, cls2 = class_at(t, i + 1, &len2);
    if (!(cls2 & (CLS_L | CLS_N | CLS_WS))) j = i + 1;
  }
  if (j >= 0) {
    int64_t k = run_end(t, j, e, CLS_L | CLS_N | CLS_WS, 0);
    while (k < e && (t[k] == '\r' || t[k] == '\n')) k++;
    return k;
  }
  /* \s*[\r\n]+: through the last CR or LF of the whitespace run, if it has one */
  int64_t k = i, after_newline = -1;
  while (k < e) {
    int l, c = class_at(t, k, &l);
    if (!(c & CLS_WS)) break;
    if (t[k] == '\r' || t[k] == '\n') after_newline = k + 1;
    k += l;
  }
  if (after_newline > 0) return after_newline;
  return space_run(t, i, e);
}

/* ---------------------------------------------------------------- NFC (Unicode 9.0, as HF's) */

enum { S_BASE = 0xac00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11a7,
       L_COUNT = 19, V_COUNT = 21, T_COUNT = 28, N_COUNT = V_COUNT * T_COUNT, S_COUNT = L_COUNT * N_COUNT };

static int nfc_maybe(uint32_t c) {
  if (c < 0x300) return 0;
  int lo = 0, hi = (int)(sizeof f2u_nfc_maybe_ranges / sizeof *f2u_nfc_maybe_ranges) - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (c < f2u_nfc_maybe_ranges[mid][0]) hi = mid - 1;
    else if (c > f2u_nfc_maybe_ranges[mid][1]) lo = mid + 1;
    else return 1;
  }
  return 0;
}

static int ccc_of(uint32_t c) {
  if (c < 0x300) return 0;
  return range3_find(f2u_ccc_ranges, (int)(sizeof f2u_ccc_ranges / sizeof *f2u_ccc_ranges), c);
}

static const uint32_t *decomposition_of(uint32_t c) {
  int lo = 0, hi = (int)(sizeof f2u_decompositions / sizeof *f2u_decompositions) - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (c < f2u_decompositions[mid][0]) hi = mid - 1;
    else if (c > f2u_decompositions[mid][0]) lo = mid + 1;
    else return f2u_decompositions[mid];
  }
  return NULL;
}

/* Full canonical decomposition of c appended at out[*n] (room for 4 more, the longest is 4). */
static void decompose(uint32_t *out, int64_t *n, uint32_t c) {
  if (c >= S_BASE && c < S_BASE + S_COUNT) {
    uint32_t s = c - S_BASE;
    out[(*n)++] = L_BASE + s / N_COUNT;
    out[(*n)++] = V_BASE + (s % N_COUNT) / T_COUNT;
    if (s % T_COUNT) out[(*n)++] = T_BASE + s % T_COUNT;
    return;
  }
  const uint32_t *d = c >= 0xc0 ? decomposition_of(c) : NULL;
  if (!d) {
    out[(*n)++] = c;
    return;
  }
  decompose(out, n, d[1]);
  if (d[2]) decompose(out, n, d[2]);
}

/* The primary composite of (a, b), 0 when none. */
static uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= L_BASE && a < L_BASE + L_COUNT && b >= V_BASE && b < V_BASE + V_COUNT)
    return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
  if (a >= S_BASE && a < S_BASE + S_COUNT && (a - S_BASE) % T_COUNT == 0 && b > T_BASE && b < T_BASE + T_COUNT)
    return a + (b - T_BASE);
  uint64_t key = (uint64_t)a << 32 | b;
  int lo = 0, hi = (int)(sizeof f2u_compositions / sizeof *f2u_compositions) - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    uint64_t k = (uint64_t)f2u_compositions[mid][0] << 32 | f2u_compositions[mid][1];
    if (key < k) hi = mid - 1;
    else if (key > k) lo = mid + 1;
    else return f2u_compositions[mid][2];
  }
  return 0;
}

/* ---------------------------------------------------------------- per-call scratch */

typedef struct symbol {
  int32_t id;      /* -1: merged into the symbol on its left */
  int32_t prev, next;
} symbol;

typedef struct heap_entry {
  uint32_t rank;
  int32_t pos;
  int32_t merged_id;
} heap_entry;

/* A cache of pre-token -> ids per thread (words repeat, and BPE is the costly part), so encode
 * stays thread-safe and many small calls share it. Direct-mapped; an entry is the word's bytes then
 * its ids in the arena; a full arena empties it, and so does a switch to another tokenizer. */
enum { CACHE_SLOTS = 1 << 16, CACHE_MAX_WORD = 64, CACHE_ARENA = 1 << 22 };
typedef struct cache_slot {
  uint32_t off;
  uint16_t word_len;   /* 0: empty */
  uint16_t n_ids;
} cache_slot;

typedef struct word_cache {
  uint64_t serial;     /* the tokenizer it holds words of */
  int64_t used;
  cache_slot slots[CACHE_SLOTS];
  uint8_t arena[CACHE_ARENA];
} word_cache;

static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;
static _Atomic uint64_t serial_counter;

static void cache_key_init(void) { pthread_key_create(&cache_key, free); }

/* This thread's cache, emptied when it held another tokenizer's words; NULL when out of memory
 * (encode then runs without it). */
static word_cache *thread_cache(const f2_tokenizer *tok) {
  pthread_once(&cache_once, cache_key_init);
  word_cache *c = pthread_getspecific(cache_key);
  if (!c) {
    c = malloc(sizeof *c);
    if (!c || pthread_setspecific(cache_key, c) != 0) {
      free(c);
      return NULL;
    }
    c->serial = 0;
  }
  if (c->serial != tok->serial) {
    memset(c->slots, 0, sizeof c->slots);
    c->used = 0;
    c->serial = tok->serial;
  }
  return c;
}

typedef struct scratch {
  uint8_t *clean; int64_t clean_cap;     /* the text with invalid UTF-8 replaced */
  uint32_t *cps; int64_t cps_cap;        /* NFC: code points */
  uint8_t *norm; int64_t norm_cap;       /* NFC: the normalized chunk */
  symbol *sym; int64_t sym_cap;          /* BPE symbols */
  heap_entry *heap; int64_t heap_cap;
  uint8_t *word; int64_t word_cap;       /* a pre-token in byte-level form (ignore_merges) */
  int32_t *ids; int64_t ids_cap;         /* one pre-token's ids */
  word_cache *cache;
} scratch;

static void scratch_free(scratch *s) {
  free(s->clean); free(s->cps); free(s->norm); free(s->sym); free(s->heap); free(s->word); free(s->ids);
}

static int grow(void **p, int64_t *cap, int64_t need, size_t elem) {
  if (need <= *cap) return F2_OK;
  int64_t n = *cap ? *cap : 64;
  while (n < need) n *= 2;
  void *q = realloc(*p, (size_t)n * elem);
  if (!q) return F2_FAIL(F2_ERR_MEM, "tokenizer: out of memory for %lld scratch entries", (long long)n);
  *p = q;
  *cap = n;
  return F2_OK;
}
#define GROW(s, field, capfield, need) grow((void **)&(s)->field, &(s)->capfield, (need), sizeof *(s)->field)

/* NFC of t[0..n) into s->norm; *out points at the result (t itself when already NFC). */
static int nfc(scratch *s, const uint8_t **out, int64_t *out_n, const uint8_t *t, int64_t n) {
  int64_t i = 0;
  while (i < n) {
    uint32_t c;
    int l = utf8_get(t + i, &c);
    if (nfc_maybe(c)) break;
    i += l;
  }
  if (i == n) {
    *out = t;
    *out_n = n;
    return F2_OK;
  }
  F2_TRY(GROW(s, cps, cps_cap, 4 * n + 4));
  int64_t m = 0;
  for (i = 0; i < n;) {
    uint32_t c;
    i += utf8_get(t + i, &c);
    decompose(s->cps, &m, c);
  }
  /* canonical ordering: stable insertion sort of each run of non-starters by combining class */
  for (int64_t k = 1; k < m; k++) {
    int cc = ccc_of(s->cps[k]);
    if (cc == 0) continue;
    uint32_t c = s->cps[k];
    int64_t j = k;
    while (j > 0) {
      int pc = ccc_of(s->cps[j - 1]);
      if (pc <= cc) break;
      s->cps[j] = s->cps[j - 1];
      j--;
    }
    s->cps[j] = c;
  }
  /* canonical composition (UAX #15): a character composes with the last starter unless blocked */
  int64_t w = 0, starter = -1;
  int last_class = 256;
  for (int64_t k = 0; k < m; k++) {
    uint32_t c = s->cps[k];
    int cc = ccc_of(c);
    if (starter >= 0 && (last_class < cc || last_class == 0)) {
      uint32_t comp = compose(s->cps[starter], c);
      if (comp) {
        s->cps[starter] = comp;
        continue;
      }
    }
    if (cc == 0) starter = w;
    last_class = cc;
    s->cps[w++] = c;
  }
  F2_TRY(GROW(s, norm, norm_cap, 4 * w + 1));
  int64_t b = 0;
  for (int64_t k = 0; k < w; k++) b += utf8_put(s->norm + b, s->cps[k]);
  *out = s->norm;
  *out_n = b;
  return F2_OK;
}

/* ---------------------------------------------------------------- BPE */

/* Where encode's ids go: the first cap into ids, all of them counted. f2_tokenizer_pretokenize
 * sets ends instead, and gets the pieces' end offsets. */
typedef struct sink {
  int32_t *ids;
  int64_t *ends;
  int64_t cap, n;
} sink;

static inline void emit(sink *out, int32_t id) {
  if (out->n < out->cap) out->ids[out->n] = id;
  out->n++;
}

static inline const merge_entry *merge_find(const f2_tokenizer *tok, int32_t a, int32_t b) {
  uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
  for (uint32_t h = (uint32_t)hash_u64(key) & tok->merge_mask;; h = (h + 1) & tok->merge_mask) {
    const merge_entry *m = &tok->merges[h];
    if (m->pair == key) return m;
    if (m->pair == UINT64_MAX) return NULL;
  }
}

static int32_t vocab_find(const f2_tokenizer *tok, const uint8_t *s, int64_t n) {
  for (uint32_t h = (uint32_t)hash_bytes(s, (size_t)n) & tok->vocab_mask;; h = (h + 1) & tok->vocab_mask) {
    int32_t id = tok->vocab_slots[h];
    if (id < 0) return -1;
    if (tok->vocab_len[id] == n && memcmp(tok->blob + tok->vocab_off[id], s, (size_t)n) == 0) return id;
  }
}

/* Min-heap on (rank, position): the merge HF's BPE would do next. */
static inline int heap_less(const heap_entry *a, const heap_entry *b) {
  return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(heap_entry *h, int64_t *n, heap_entry e) {
  int64_t i = (*n)++;
  while (i > 0) {
    int64_t p = (i - 1) / 2;
    if (!heap_less(&e, &h[p])) break;
    h[i] = h[p];
    i = p;
  }
  h[i] = e;
}

static heap_entry heap_pop(heap_entry *h, int64_t *n) {
  heap_entry top = h[0], last = h[--(*n)];
  int64_t i = 0;
  for (;;) {
    int64_t c = 2 * i + 1;
    if (c >= *n) break;
    if (c + 1 < *n && heap_less(&h[c + 1], &h[c])) c++;
    if (!heap_less(&h[c], &last)) break;
    h[i] = h[c];
    i = c;
  }
  if (*n > 0) h[i] = last;
  return top;
}

static void push_pair(const f2_tokenizer *tok, scratch *s, int64_t *heap_n, int32_t pos) {
  int32_t nx = s->sym[pos].next;
  if (nx < 0) return;
  const merge_entry *m = merge_find(tok, s->sym[pos].id, s->sym[nx].id);
  if (m) heap_push(s->heap, heap_n, (heap_entry){m->rank, pos, m->merged_id});
}

/* The cache slot of word w, and whether it holds w. */
static cache_slot *cache_find(word_cache *c, const uint8_t *w, int64_t n, int *hit) {
  cache_slot *slot = &c->slots[hash_bytes(w, (size_t)n) & (CACHE_SLOTS - 1)];
  *hit = slot->word_len == n && bytes_equal(c->arena + slot->off, w, (size_t)n);
  return slot;
}

static void cache_put(word_cache *c, cache_slot *slot, const uint8_t *w, int64_t n, const int32_t *ids, int32_t k) {
  int64_t need = ((n + 3) & ~3) + 4 * (int64_t)k;
  if (c->used + need > CACHE_ARENA) {
    memset(c->slots, 0, sizeof c->slots);
    c->used = 0;
  }
  slot->off = (uint32_t)c->used;
  slot->word_len = (uint16_t)n;
  slot->n_ids = (uint16_t)k;
  memcpy(c->arena + c->used, w, (size_t)n);
  memcpy(c->arena + c->used + ((n + 3) & ~3), ids, 4 * (size_t)k);
  c->used += need;
}

/* BPE of one pre-token w[0..n) (raw bytes), ids appended to out. */
static int bpe_word(const f2_tokenizer *tok, scratch *s, sink *out, const uint8_t *w, int64_t n) {
  cache_slot *slot = NULL;
  if (s->cache && n <= CACHE_MAX_WORD) {
    int hit;
    slot = cache_find(s->cache, w, n, &hit);
    if (hit) {
      const int32_t *ids = (const int32_t *)(s->cache->arena + slot->off + ((n + 3) & ~3));
      for (int32_t i = 0; i < slot->n_ids; i++) emit(out, ids[i]);
      return F2_OK;
    }
  }
  if (tok->ignore_merges) {
    F2_TRY(GROW(s, word, word_cap, 2 * n));
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
      memcpy(s->word + k, tok->byte_utf8[w[i]] + 1, tok->byte_utf8[w[i]][0]);
      k += tok->byte_utf8[w[i]][0];
    }
    int32_t id = vocab_find(tok, s->word, k);
    if (id >= 0) {
      emit(out, id);
      if (slot) cache_put(s->cache, slot, w, n, &id, 1);
      return F2_OK;
    }
  }
  if (n > INT32_MAX / 4)   /* symbol positions are 32-bit */
    return F2_FAIL(F2_ERR_UNSUPPORTED, "tokenizer: a pre-token of %lld bytes (one word or space run) is too long",
                   (long long)n);
  F2_TRY(GROW(s, sym, sym_cap, n));
  int32_t m = 0;
  int unk_open = 0;
  for (int64_t i = 0; i < n; i++) {
    int32_t id = tok->byte_id[w[i]];
    if (id < 0) {   /* a byte missing from the vocab: the unknown token (fused when asked), or dropped */
      id = tok->special_ids[F2_TOKEN_UNK];
      if (id < 0) continue;
      if (tok->fuse_unk && unk_open) continue;
      unk_open = 1;
    } else {
      unk_open = 0;
    }
    s->sym[m] = (symbol){id, m - 1, m + 1};
    m++;
  }
  if (m > 0) {
    s->sym[m - 1].next = -1;
    F2_TRY(GROW(s, heap, heap_cap, 3 * (int64_t)m));
    int64_t heap_n = 0;
    for (int32_t i = 0; i + 1 < m; i++) push_pair(tok, s, &heap_n, i);
    while (heap_n > 0) {
      heap_entry top = heap_pop(s->heap, &heap_n);
      int32_t pos = top.pos;
      symbol *left = &s->sym[pos];
      if (left->id < 0 || left->next < 0) continue;   /* merged away, or last */
      symbol *right = &s->sym[left->next];
      const merge_entry *now = merge_find(tok, left->id, right->id);
      if (!now || now->merged_id != top.merged_id) continue;   /* stale: the pair changed */
      left->id = top.merged_id;
      right->id = -1;
      left->next = right->next;
      if (left->next >= 0) s->sym[left->next].prev = pos;
      if (left->prev >= 0) push_pair(tok, s, &heap_n, left->prev);
      push_pair(tok, s, &heap_n, pos);
    }
  }
  F2_TRY(GROW(s, ids, ids_cap, n));
  int32_t k = 0;
  for (int32_t i = m > 0 ? 0 : -1; i >= 0; i = s->sym[i].next) s->ids[k++] = s->sym[i].id;
  for (int32_t i = 0; i < k; i++) emit(out, s->ids[i]);
  if (slot) cache_put(s->cache, slot, w, n, s->ids, k);
  return F2_OK;
}

/* ---------------------------------------------------------------- encode */

/* Pre-tokenizes t[0..n) (valid UTF-8, normalized) and runs BPE on each piece, or records the
 * pieces' ends when out->ends is set. */
static int pretokenize(const f2_tokenizer *tok, scratch *s, sink *out, const uint8_t *t, int64_t n) {
  int64_t i = 0;
  while (i < n) {
    int64_t e = n;
    if (tok->pretokenizer == F2_PRETOK_SMOLLM) {   /* Digits(individual_digits): each numeric char alone */
      int len, cls = class_at(t, i, &len);
      e = (cls & CLS_NUMERIC) ? i + len : run_end(t, i, n, CLS_NUMERIC, 0);
    }
    while (i < e) {
      int64_t k = tok->pretokenizer == F2_PRETOK_QWEN2 ? qwen2_match(t, i, e) : gpt2_match(t, i, e);
      if (!out->ends) F2_TRY(bpe_word(tok, s, out, t + i, k - i));
      else if (out->n++ < out->cap) out->ends[out->n - 1] = k;
      i = k;
    }
  }
  return F2_OK;
}

/* Splits t[0..n) at the added tokens of set (leftmost, then longest match); the text between goes
 * on to next(), the tokens out as their ids. */
typedef int (*chunk_fn)(const f2_tokenizer *tok, scratch *s, sink *out, const uint8_t *t, int64_t n);

static int split_added(const f2_tokenizer *tok, scratch *s, sink *out, const added_set *set,
                       const uint8_t *t, int64_t n, chunk_fn next) {
  int64_t start = 0;
  for (int64_t i = 0; i < n && set->count; i++) {
    int32_t a = set->first[t[i]], b = set->first[t[i] + 1];
    for (int32_t k = a; k < b; k++) {
      const added_token *at = &set->tokens[k];
      if (at->len <= n - i && memcmp(t + i, tok->blob + at->off, (size_t)at->len) == 0) {
        if (i > start) F2_TRY(next(tok, s, out, t + start, i - start));
        emit(out, at->id);
        start = i + at->len;
        i = start - 1;
        break;
      }
    }
  }
  if (start < n) F2_TRY(next(tok, s, out, t + start, n - start));
  return F2_OK;
}

static int chunk_pretokenize(const f2_tokenizer *tok, scratch *s, sink *out, const uint8_t *t, int64_t n) {
  return pretokenize(tok, s, out, t, n);
}

static int chunk_normalize(const f2_tokenizer *tok, scratch *s, sink *out, const uint8_t *t, int64_t n) {
  if (tok->nfc) F2_TRY(nfc(s, &t, &n, t, n));
  /* t may now be s->norm: the pieces below only read it, and BPE uses other buffers */
  return split_added(tok, s, out, &tok->normalized_added, t, n, chunk_pretokenize);
}

/* The text as valid UTF-8: t itself, or a copy in s->clean with invalid bytes replaced by U+FFFD. */
static int sanitize(scratch *s, const uint8_t **out, int64_t *out_n, const uint8_t *t, int64_t n) {
  int64_t i = 0;
  while (i < n) {
    if (t[i] < 0x80) { i++; continue; }
    int l = utf8_len(t + i, n - i);
    if (l < 0) break;
    i += l;
  }
  *out = t;
  *out_n = n;
  if (i == n) return F2_OK;
  F2_TRY(GROW(s, clean, clean_cap, 3 * n));
  memcpy(s->clean, t, (size_t)i);
  int64_t k = i;
  while (i < n) {
    int l = utf8_len(t + i, n - i);
    if (l > 0) {
      memcpy(s->clean + k, t + i, (size_t)l);
      k += l;
      i += l;
    } else {
      k += utf8_put(s->clean + k, 0xfffd);
      i -= l;
    }
  }
  *out = s->clean;
  *out_n = k;
  return F2_OK;
}

static int check_text(const char *what, const void *text, int64_t len, const void *out, int64_t cap,
                      const int64_t *n_out) {
  if (len < 0 || (len > 0 && !text)) return F2_FAIL(F2_ERR_ARG, "%s: no text (length %lld)", what, (long long)len);
  if (cap < 0 || (cap > 0 && !out)) return F2_FAIL(F2_ERR_ARG, "%s: no output buffer (capacity %lld)", what, (long long)cap);
  if (!n_out) return F2_FAIL(F2_ERR_ARG, "%s: no place for the output count", what);
  return F2_OK;
}

int f2_tokenizer_encode(const f2_tokenizer *tok, int32_t *ids, int64_t *n_ids, const char *text, int64_t len,
                        int64_t cap) {
  if (!tok) return F2_FAIL(F2_ERR_ARG, "f2_tokenizer_encode: no tokenizer");
  F2_TRY(check_text("f2_tokenizer_encode", text, len, ids, cap, n_ids));
  scratch s = {0};
  s.cache = thread_cache(tok);
  sink out = {ids, NULL, cap, 0};
  const uint8_t *t;
  int64_t n;
  int rc = sanitize(&s, &t, &n, (const uint8_t *)text, len);
  if (rc == F2_OK) rc = split_added(tok, &s, &out, &tok->raw_added, t, n, chunk_normalize);
  scratch_free(&s);
  *n_ids = out.n;
  return rc;
}

int f2_tokenizer_pretokenize(const f2_tokenizer *tok, int64_t *ends, int64_t *n_pieces, const char *text,
                             int64_t len, int64_t cap) {
  if (!tok) return F2_FAIL(F2_ERR_ARG, "f2_tokenizer_pretokenize: no tokenizer");
  F2_TRY(check_text("f2_tokenizer_pretokenize", text, len, ends, cap, n_pieces));
  const uint8_t *t = (const uint8_t *)text;
  for (int64_t i = 0; i < len;) {
    int l = utf8_len(t + i, len - i);
    if (l < 0) return F2_FAIL(F2_ERR_ARG, "f2_tokenizer_pretokenize: invalid UTF-8 at byte %lld", (long long)i);
    i += l;
  }
  sink out = {NULL, ends, cap, 0};
  int rc = pretokenize(tok, NULL, &out, t, len);
  *n_pieces = out.n;
  return rc;
}

int f2_tokenizer_normalize(const f2_tokenizer *tok, char *out, int64_t *n_out, const char *text, int64_t len,
                           int64_t cap) {
  if (!tok) return F2_FAIL(F2_ERR_ARG, "f2_tokenizer_normalize: no tokenizer");
  F2_TRY(check_text("f2_tokenizer_normalize", text, len, out, cap, n_out));
  scratch s = {0};
  const uint8_t *t;
  int64_t n;
  int rc = sanitize(&s, &t, &n, (const uint8_t *)text, len);
  if (rc == F2_OK && tok->nfc) rc = nfc(&s, &t, &n, t, n);
  if (rc == F2_OK) {
    memcpy(out, t, (size_t)(n < cap ? n : cap));
    *n_out = n;
  }
  scratch_free(&s);
  return rc;
}

/* ---------------------------------------------------------------- decode and lookups */

int f2_tokenizer_decode(const f2_tokenizer *tok, char *out, int64_t *n_out, const int32_t *ids, int64_t n_ids,
                        int64_t cap, int32_t skip_special) {
  if (!tok) return F2_FAIL(F2_ERR_ARG, "f2_tokenizer_decode: no tokenizer");
  if (n_ids < 0 || (n_ids > 0 && !ids)) return F2_FAIL(F2_ERR_ARG, "f2_tokenizer_decode: no ids (count %lld)", (long long)n_ids);
  if (cap < 0 || (cap > 0 && !out)) return F2_FAIL(F2_ERR_ARG, "f2_tokenizer_decode: no output buffer (capacity %lld)", (long long)cap);
  if (!n_out) return F2_FAIL(F2_ERR_ARG, "f2_tokenizer_decode: no place for the output length");
  int64_t n = 0;
  for (int64_t i = 0; i < n_ids; i++) {
    int32_t id = ids[i];
    if (id < 0 || id >= tok->n_ids || tok->decode_off[id] < 0)
      return F2_FAIL(F2_ERR_ARG, "f2_tokenizer_decode: id %d at position %lld is not a token (vocabulary of %d)",
                     id, (long long)i, tok->n_ids);
    if (skip_special && tok->is_special[id]) continue;
    int32_t l = tok->decode_len[id];
    if (n + l <= cap) memcpy(out + n, tok->blob + tok->decode_off[id], (size_t)l);
    else if (n < cap) memcpy(out + n, tok->blob + tok->decode_off[id], (size_t)(cap - n));
    n += l;
  }
  *n_out = n;
  return F2_OK;
}

int32_t f2_tokenizer_vocab_size(const f2_tokenizer *tok) { return tok ? tok->n_ids : 0; }

int32_t f2_tokenizer_special_id(const f2_tokenizer *tok, int32_t which) {
  return tok && which >= 0 && which < 4 ? tok->special_ids[which] : -1;
}

int32_t f2_tokenizer_is_special(const f2_tokenizer *tok, int32_t id) {
  return tok && id >= 0 && id < tok->n_ids ? tok->is_special[id] : 0;
}

int32_t f2_tokenizer_token_to_id(const f2_tokenizer *tok, const char *token) {
  if (!tok || !token) return -1;
  size_t n = strlen(token);
  for (int32_t i = 0; i < tok->n_added; i++)
    if ((size_t)tok->all_added[i].len == n && memcmp(tok->blob + tok->all_added[i].off, token, n) == 0)
      return tok->all_added[i].id;
  return vocab_find(tok, (const uint8_t *)token, (int64_t)n);
}

const char *f2_tokenizer_id_to_token(const f2_tokenizer *tok, int32_t id) {
  if (!tok || id < 0 || id >= tok->n_ids || tok->name_off[id] < 0) return NULL;
  return (const char *)tok->blob + tok->name_off[id];
}

/* ---------------------------------------------------------------- construction */

void f2_tokenizer_free(f2_tokenizer *tok) {
  if (!tok) return;
  free(tok->blob); free(tok->vocab_off); free(tok->vocab_len); free(tok->name_off); free(tok->decode_off); free(tok->decode_len);
  free(tok->is_special); free(tok->vocab_slots); free(tok->merges);
  free(tok->raw_added.tokens); free(tok->normalized_added.tokens); free(tok->all_added);
  free(tok);
}

static int added_cmp(const void *pa, const void *pb) {
  const added_token *a = pa, *b = pb;
  if (a->first != b->first) return a->first < b->first ? -1 : 1;
  if (a->len != b->len) return a->len > b->len ? -1 : 1;   /* longest first */
  return a->id < b->id ? -1 : a->id > b->id;
}

/* Sorts by first byte, longest first, and indexes the first bytes. */
static void added_index(added_set *set) {
  qsort(set->tokens, (size_t)set->count, sizeof *set->tokens, added_cmp);
  int32_t k = 0;
  for (int b = 0; b <= 256; b++) {
    while (k < set->count && set->tokens[k].first < b) k++;
    set->first[b] = k;
  }
}

/* Appends n bytes and a NUL to the blob; *off = where they went. */
static int blob_add(f2_tokenizer *tok, int64_t *cap, int64_t *used, int64_t *off, const void *p, int64_t n) {
  if (*used + n + 1 > *cap) {
    int64_t c = *cap ? *cap : 4096;
    while (c < *used + n + 1) c *= 2;
    uint8_t *b = realloc(tok->blob, (size_t)c);
    if (!b) return F2_FAIL(F2_ERR_MEM, "f2_tokenizer_new: out of memory for %lld bytes of tokens", (long long)c);
    tok->blob = b;
    *cap = c;
  }
  memcpy(tok->blob + *used, p, (size_t)n);
  tok->blob[*used + n] = 0;
  *off = *used;
  *used += n + 1;
  return F2_OK;
}

static int build(f2_tokenizer *tok, const f2_tokenizer_spec *spec, scratch *s) {
  tok->vocab_off = malloc((size_t)tok->n_ids * sizeof *tok->vocab_off);
  tok->vocab_len = calloc((size_t)tok->n_ids, sizeof *tok->vocab_len);
  tok->name_off = malloc((size_t)tok->n_ids * sizeof *tok->name_off);
  tok->decode_off = malloc((size_t)tok->n_ids * sizeof *tok->decode_off);
  tok->decode_len = calloc((size_t)tok->n_ids, sizeof *tok->decode_len);
  tok->is_special = calloc((size_t)tok->n_ids, 1);
  tok->vocab_mask = table_size_for(spec->n_vocab) - 1;
  tok->vocab_slots = malloc(((size_t)tok->vocab_mask + 1) * sizeof *tok->vocab_slots);
  tok->merge_mask = table_size_for(spec->n_merges) - 1;
  tok->merges = malloc(((size_t)tok->merge_mask + 1) * sizeof *tok->merges);
  tok->all_added = calloc((size_t)spec->n_added + 1, sizeof *tok->all_added);
  tok->raw_added.tokens = calloc((size_t)spec->n_added + 1, sizeof(added_token));
  tok->normalized_added.tokens = calloc((size_t)spec->n_added + 1, sizeof(added_token));
  if (!tok->vocab_off || !tok->vocab_len || !tok->name_off || !tok->decode_off || !tok->decode_len || !tok->is_special ||
      !tok->vocab_slots || !tok->merges || !tok->all_added || !tok->raw_added.tokens || !tok->normalized_added.tokens)
    return F2_FAIL(F2_ERR_MEM, "f2_tokenizer_new: out of memory for %d tokens", tok->n_ids);
  memset(tok->vocab_slots, 0xff, ((size_t)tok->vocab_mask + 1) * sizeof *tok->vocab_slots);
  memset(tok->merges, 0xff, ((size_t)tok->merge_mask + 1) * sizeof *tok->merges);
  for (int32_t i = 0; i < tok->n_ids; i++) tok->vocab_off[i] = tok->name_off[i] = tok->decode_off[i] = -1;
  int64_t cap = 0, used = 0;

  /* the model vocab: strings by id, and the hash map over them */
  for (int32_t id = 0; id < spec->n_vocab; id++) {
    const char *v = spec->vocab[id];
    if (!v) continue;
    size_t n = strlen(v);
    F2_TRY(blob_add(tok, &cap, &used, &tok->vocab_off[id], v, (int64_t)n));
    tok->vocab_len[id] = (int32_t)n;
    /* a later id with the same string takes the slot (a dict built in id order does the same) */
    uint32_t h = (uint32_t)hash_bytes((const uint8_t *)v, n) & tok->vocab_mask;
    for (;; h = (h + 1) & tok->vocab_mask) {
      int32_t o = tok->vocab_slots[h];
      if (o < 0 || (tok->vocab_len[o] == (int32_t)n && memcmp(tok->blob + tok->vocab_off[o], v, n) == 0)) break;
    }
    tok->vocab_slots[h] = id;
  }
  for (int b = 0; b < 256; b++) {
    uint8_t *c = tok->byte_utf8[b];
    c[0] = (uint8_t)utf8_put(c + 1, byte_to_char(b));
    tok->byte_id[b] = vocab_find(tok, c + 1, c[0]);
  }

  /* merges: (left id, right id) -> (rank, merged id), all three strings must be vocab tokens */
  for (int32_t r = 0; r < spec->n_merges; r++) {
    const char *l = spec->merge_left[r], *rt = spec->merge_right[r];
    if (!l || !rt) return F2_FAIL(F2_ERR_ARG, "f2_tokenizer_new: merge %d lacks a side", r);
    size_t ln = strlen(l), rn = strlen(rt);
    int32_t a = vocab_find(tok, (const uint8_t *)l, (int64_t)ln);
    int32_t b = vocab_find(tok, (const uint8_t *)rt, (int64_t)rn);
    F2_TRY(GROW(s, word, word_cap, (int64_t)(ln + rn + 1)));
    memcpy(s->word, l, ln);
    memcpy(s->word + ln, rt, rn);
    s->word[ln + rn] = 0;
    int32_t m = vocab_find(tok, s->word, (int64_t)(ln + rn));
    if (a < 0 || b < 0 || m < 0)
      return F2_FAIL(F2_ERR_FORMAT, "f2_tokenizer_new: merge %d ('%.64s' '%.64s'): '%.128s' is not in the vocabulary",
                     r, l, rt, a < 0 ? l : b < 0 ? rt : (const char *)s->word);
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint32_t h = (uint32_t)hash_u64(key) & tok->merge_mask;
    while (tok->merges[h].pair != UINT64_MAX && tok->merges[h].pair != key) h = (h + 1) & tok->merge_mask;
    tok->merges[h] = (merge_entry){key, (uint32_t)r, m};   /* a repeated merge keeps the later rank, as HF */
  }

  /* added tokens: normalized ones are matched after NFC, so their text is normalized too */
  for (int32_t i = 0; i < spec->n_added; i++) {
    const char *c = spec->added[i];
    int32_t id = spec->added_ids[i], flags = spec->added_flags ? spec->added_flags[i] : F2_ADDED_SPECIAL;
    added_token t = {0, (int32_t)strlen(c), id, (uint8_t)c[0]};
    F2_TRY(blob_add(tok, &cap, &used, &t.off, c, t.len));
    tok->all_added[tok->n_added++] = t;
    if (flags & F2_ADDED_SPECIAL) tok->is_special[id] = 1;
    if (!(flags & F2_ADDED_NORMALIZED)) {
      tok->raw_added.tokens[tok->raw_added.count++] = t;
      continue;
    }
    if (tok->nfc) {
      const uint8_t *norm;
      int64_t n;
      F2_TRY(nfc(s, &norm, &n, (const uint8_t *)c, t.len));
      F2_TRY(blob_add(tok, &cap, &used, &t.off, norm, n));
      t.len = (int32_t)n;
      t.first = norm[0];
    }
    tok->normalized_added.tokens[tok->normalized_added.count++] = t;
  }
  added_index(&tok->raw_added);
  added_index(&tok->normalized_added);

  /* each id's name: its added content (the original text, the last one given), else its vocab string */
  memcpy(tok->name_off, tok->vocab_off, (size_t)tok->n_ids * sizeof *tok->name_off);
  for (int32_t i = 0; i < tok->n_added; i++) tok->name_off[tok->all_added[i].id] = tok->all_added[i].off;
  /* what decode writes for each id: its name through the inverse byte map (HF's ByteLevel decoder) */
  int16_t char_to_byte[0x144];
  memset(char_to_byte, 0xff, sizeof char_to_byte);
  for (int b = 0; b < 256; b++) char_to_byte[byte_to_char(b)] = (int16_t)b;
  for (int32_t id = 0; id < tok->n_ids; id++) {
    int64_t src = tok->name_off[id];
    if (src < 0) continue;
    int32_t n = (int32_t)strlen((const char *)tok->blob + src);
    F2_TRY(GROW(s, word, word_cap, n + 1));
    int32_t k = token_bytes(s->word, tok->blob + src, n, char_to_byte);
    F2_TRY(blob_add(tok, &cap, &used, &tok->decode_off[id], s->word, k));
    tok->decode_len[id] = k;
  }
  return F2_OK;
}

f2_tokenizer *f2_tokenizer_new(const f2_tokenizer_spec *spec) {
  if (!spec) return F2_FAIL_NULL(F2_ERR_ARG, "f2_tokenizer_new: no spec");
  if (spec->n_vocab < 0 || (spec->n_vocab > 0 && !spec->vocab))
    return F2_FAIL_NULL(F2_ERR_ARG, "f2_tokenizer_new: no vocab (n_vocab %d)", spec->n_vocab);
  if (spec->n_merges < 0 || (spec->n_merges > 0 && (!spec->merge_left || !spec->merge_right)))
    return F2_FAIL_NULL(F2_ERR_ARG, "f2_tokenizer_new: no merges (n_merges %d)", spec->n_merges);
  if (spec->n_added < 0 || (spec->n_added > 0 && (!spec->added || !spec->added_ids)))
    return F2_FAIL_NULL(F2_ERR_ARG, "f2_tokenizer_new: no added tokens (n_added %d)", spec->n_added);
  if (spec->pretokenizer < F2_PRETOK_GPT2 || spec->pretokenizer > F2_PRETOK_QWEN2)
    return F2_FAIL_NULL(F2_ERR_ARG, "f2_tokenizer_new: unknown pre-tokenizer %d", spec->pretokenizer);
  int32_t n_ids = spec->n_vocab;
  for (int32_t i = 0; i < spec->n_added; i++) {
    if (!spec->added[i] || !spec->added[i][0])
      return F2_FAIL_NULL(F2_ERR_ARG, "f2_tokenizer_new: added token %d is empty", i);
    if (spec->added_ids[i] < 0)
      return F2_FAIL_NULL(F2_ERR_ARG, "f2_tokenizer_new: added token '%.64s' has id %d", spec->added[i], spec->added_ids[i]);
    if (spec->added_ids[i] >= n_ids) n_ids = spec->added_ids[i] + 1;
  }
  if (n_ids == 0) return F2_FAIL_NULL(F2_ERR_ARG, "f2_tokenizer_new: no tokens at all");
  const int32_t special[4] = {spec->bos_id, spec->eos_id, spec->pad_id, spec->unk_id};
  const char *names[4] = {"bos_id", "eos_id", "pad_id", "unk_id"};
  for (int k = 0; k < 4; k++)
    if (special[k] < -1 || special[k] >= n_ids)
      return F2_FAIL_NULL(F2_ERR_ARG, "f2_tokenizer_new: %s %d is outside the %d ids", names[k], special[k], n_ids);

  f2_tokenizer *tok = calloc(1, sizeof *tok);
  if (!tok) return F2_FAIL_NULL(F2_ERR_MEM, "f2_tokenizer_new: out of memory");
  tok->n_ids = n_ids;
  tok->serial = atomic_fetch_add(&serial_counter, 1) + 1;
  tok->pretokenizer = spec->pretokenizer;
  tok->nfc = spec->nfc != 0;
  tok->ignore_merges = spec->ignore_merges != 0;
  tok->fuse_unk = spec->fuse_unk != 0;
  memcpy(tok->special_ids, special, sizeof special);
  scratch s = {0};
  int rc = build(tok, spec, &s);
  scratch_free(&s);
  if (rc != F2_OK) {
    f2_tokenizer_free(tok);
    return NULL;
  }
  for (int k = 0; k < 4; k++)
    if (special[k] >= 0 && tok->decode_off[special[k]] < 0) {
      F2_FAIL(F2_ERR_ARG, "f2_tokenizer_new: %s %d has no token", names[k], special[k]);
      f2_tokenizer_free(tok);
      return NULL;
    }
  return tok;
}
