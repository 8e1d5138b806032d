/* f2.h — the one public C API of the fairy2 runtime: everything Lua may call.
 *
 * Lua loads the text between the F2_FFI_BEGIN and F2_FFI_END markers verbatim into ffi.cdef
 * (the build embeds this file into the binary; tests/lua/test_header.lua proves they agree).
 * So between the markers: no preprocessor lines, no macros, only what LuaJIT's C parser accepts.
 *
 * Conventions: every symbol starts f2_, every enum value F2_. Functions that can fail return an
 * int status (F2_OK = 0, negative on failure) and keep a "file:line: message" for f2_last_error().
 * Constructors return NULL on failure (message likewise). Outputs first, then inputs, then sizes.
 * Tensors are passed by pointer; ops dispatch on the device of their tensors (one dispatch point
 * per op, CPU reference in runtime/, CUDA in kernels/). */
#ifndef F2_H
#define F2_H
#include <stddef.h>
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif

/* F2_FFI_BEGIN */

/* ---------------------------------------------------------------- errors, version, devices */
enum {
  F2_OK = 0,
  F2_ERR_ARG = -1,      /* bad argument: shapes, dtypes, ranges */
  F2_ERR_MEM = -2,      /* out of memory (host or device) */
  F2_ERR_IO = -3,       /* file system, network */
  F2_ERR_FORMAT = -4,   /* malformed file contents */
  F2_ERR_CUDA = -5,     /* CUDA / cuBLAS / NCCL failure */
  F2_ERR_NO_DEVICE = -6,/* a GPU was asked for and none is usable */
  F2_ERR_UNSUPPORTED = -7
};
const char *f2_last_error(void);
void f2_clear_error(void);
const char *f2_version(void);
/* One line per component: fairy2 version, build type, CUDA runtime/driver, cuBLAS, NCCL, GPUs seen. */
int f2_build_info(char *buf, size_t size);
const char *f2_header_text(void);   /* the text of this file, embedded at build time */

int f2_cuda_compiled(void);          /* 1 when built with CUDA */
int f2_cuda_device_count(void);      /* 0 when none is usable (never an error) */
int f2_cuda_set_device(int32_t index);

/* ---------------------------------------------------------------- tensors */
typedef enum {
  F2_F32 = 0, F2_BF16 = 1, F2_F16 = 2, F2_I32 = 3, F2_I64 = 4, F2_U8 = 5, F2_I8 = 6,
  F2_DTYPE_COUNT = 7
} f2_dtype;
typedef enum { F2_CPU = 0, F2_CUDA = 1 } f2_device;
enum { F2_MAX_DIMS = 8 };

typedef struct f2_storage f2_storage;   /* refcounted owner of bytes (malloc, caching allocator, mmap) */

/* A tensor is a small POD view over a storage. data is the address of element [0,..,0];
 * strides are in elements and may be 0 (broadcast) but never negative. */
typedef struct f2_tensor {
  void *data;
  f2_storage *storage;
  int32_t dtype;
  int32_t device;
  int32_t ndim;
  int32_t flags;
  int64_t shape[8];
  int64_t stride[8];
} f2_tensor;

size_t f2_dtype_size(int32_t dtype);
const char *f2_dtype_name(int32_t dtype);
int32_t f2_dtype_from_name(const char *name);   /* -1 when unknown */

/* New contiguous tensor, uninitialized. */
f2_tensor *f2_tensor_new(int32_t dtype, int32_t device, int32_t ndim, const int64_t *shape);
/* Wraps memory owned elsewhere; release(owner) is called when the last view goes (may be NULL). */
f2_tensor *f2_tensor_wrap(void *data, int32_t dtype, int32_t device, int32_t ndim, const int64_t *shape,
                          void (*release)(void *owner), void *owner);
/* Drops this view's reference; the storage goes with the last reference. NULL is fine. */
void f2_tensor_free(f2_tensor *t);
int64_t f2_tensor_numel(const f2_tensor *t);
size_t f2_tensor_nbytes(const f2_tensor *t);
int f2_tensor_is_contiguous(const f2_tensor *t);
int32_t f2_tensor_refcount(const f2_tensor *t);

/* Views: share the storage, return a new tensor handle (free it like any other). */
f2_tensor *f2_tensor_view(const f2_tensor *t);                                   /* same view */
f2_tensor *f2_tensor_narrow(const f2_tensor *t, int32_t dim, int64_t start, int64_t length);
f2_tensor *f2_tensor_select(const f2_tensor *t, int32_t dim, int64_t index);    /* drops dim */
f2_tensor *f2_tensor_reshape(const f2_tensor *t, int32_t ndim, const int64_t *shape); /* -1 infers one dim; needs a compatible layout */
f2_tensor *f2_tensor_permute(const f2_tensor *t, const int32_t *dims);
f2_tensor *f2_tensor_transpose(const f2_tensor *t, int32_t dim0, int32_t dim1);
f2_tensor *f2_tensor_expand(const f2_tensor *t, int32_t ndim, const int64_t *shape); /* broadcast: stride 0 */
/* offset: in elements from t's first element; the view must stay inside t's storage. */
f2_tensor *f2_tensor_as_strided(const f2_tensor *t, int32_t ndim, const int64_t *shape,
                                const int64_t *stride, int64_t offset);

/* ---------------------------------------------------------------- tensor ops
 * Elementwise ops take any strides (broadcast inputs are stride-0 views made by f2_tensor_expand:
 * the shapes of out and inputs must be equal) and any dtypes, mixed; math is fp32 for a float
 * output (fp64 on CPU, where it is free), fp64 for an integer output, stored in the output's dtype
 * (bf16/f16 round to nearest even from fp32; to integers: truncate toward zero, saturate, NaN -> 0).
 * out may be the very view of an input (in place); other overlaps are undefined.
 * All tensors of one op live on one device. */

/* dst <- src: equal shapes; any strides, dtypes and devices. This is the one copy: contiguous copy,
 * device transfer and dtype cast (as above; integer -> integer is exact or wraps as C does). */
int f2_copy(f2_tensor *dst, const f2_tensor *src);
int f2_fill(f2_tensor *t, double value);
/* Element i (row-major index) = start + i * step, computed in fp64. */
int f2_arange(f2_tensor *t, double start, double step);
/* t itself (a new view) when contiguous, else a contiguous copy on t's device. */
f2_tensor *f2_tensor_contiguous(const f2_tensor *t);
/* Counter-based RNG: element i (row-major linear index of the logical shape) is a pure function
 * of (seed, i), so CPU and CUDA give the same numbers for the same seed. */
int f2_rand_uniform(f2_tensor *t, uint64_t seed, double low, double high);
int f2_rand_normal(f2_tensor *t, uint64_t seed, double mean, double std);

typedef enum {
  F2_OP_ADD = 0, F2_OP_SUB, F2_OP_MUL, F2_OP_DIV, F2_OP_MAX, F2_OP_MIN, F2_OP_POW
} f2_binary_op;
typedef enum {
  F2_OP_NEG = 0, F2_OP_ABS, F2_OP_EXP, F2_OP_LOG, F2_OP_SQRT, F2_OP_RSQRT, F2_OP_TANH,
  F2_OP_SIGMOID, F2_OP_SILU, F2_OP_SQUARE, F2_OP_SIGN
} f2_unary_op;
typedef enum { F2_RED_SUM = 0, F2_RED_MEAN, F2_RED_MAX, F2_RED_MIN, F2_RED_NORM } f2_reduce_op;

int f2_binary(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t op);
int f2_binary_scalar(f2_tensor *out, const f2_tensor *a, double s, int32_t op);  /* out = a op s */
int f2_unary(f2_tensor *out, const f2_tensor *a, int32_t op);
/* Reduce x over dimension dim (dim = -1: over all elements, out has one element; otherwise out
 * has x's shape with that dim removed or of size 1). Accumulates in fp32 or better, in a fixed
 * order (deterministic: same input, same bits). NORM is the L2 norm. Over no elements: SUM and
 * NORM give 0, MEAN NaN, MAX and MIN fail. A NaN input makes MAX/MIN NaN. */
int f2_reduce(f2_tensor *out, const f2_tensor *x, int32_t dim, int32_t op);
/* out[M,N] = alpha * op(a)[M,K] @ op(b)[K,N] + beta * out, op = transpose when trans_* is set.
 * 2-D, or 3-D batched with equal batch (all three tensors of one rank). a and b of one dtype (f32,
 * bf16, f16), out f32 or bf16, not overlapping a or b; beta = 0 never reads out. CPU: fp32
 * accumulation reference. CUDA: cuBLASLt, bf16 or fp32 inputs, fp32 accumulation. */
int f2_matmul(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t trans_a, int32_t trans_b,
              float alpha, float beta);
/* out = alpha * op(a) @ op(b) + beta * c: f2_matmul with the addend in another tensor c of out's shape
 * and dtype (c may be out itself: then it is f2_matmul; any other overlap with out fails). beta = 0
 * never reads c. CUDA: c is cuBLASLt's C and out its D (one pass) when c has out's strides; else c is
 * copied into out first, as on the CPU. For fusing a residual add into the GEMM before it. */
int f2_matmul_add(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t trans_a, int32_t trans_b,
                  float alpha, const f2_tensor *c, float beta);

/* ---------------------------------------------------------------- GPU memory */
typedef struct f2_memory_stats {
  int64_t allocated;        /* bytes handed out to live tensors */
  int64_t reserved;         /* bytes held from cudaMalloc (allocated + cached) */
  int64_t peak_allocated;
  int64_t peak_reserved;
  int64_t num_cuda_mallocs; /* calls to cudaMalloc so far */
  int64_t num_allocs;       /* allocations served (cache hits included) */
} f2_memory_stats;
int f2_cuda_memory_stats(f2_memory_stats *out);
int f2_cuda_reset_peak(void);
int f2_cuda_empty_cache(void);   /* gives cached, unused blocks back to the driver */
int f2_cuda_synchronize(void);
/* CUDA graphs of the fairy2 stream. Between begin and end, work queued on the GPU is recorded, not
 * run; GPU memory allocated meanwhile comes from the graph's private pool (blocks freed during the
 * capture are reused only by it, and stay the graph's until it is freed), so replays never touch
 * memory handed out since. Anything that waits for the GPU (reading a value back) fails the capture.
 * end returns NULL (with a message) when the capture failed; free gives the pool's free blocks back
 * to the allocator. */
/* Time per kernel family, for benchmarks: while on, every GPU op dispatched eagerly (not while a graph
 * is captured) is bracketed by CUDA events; the report waits for the GPU and writes one line per op
 * family, "name calls total_ms", slowest first, then starts over. */
int f2_cuda_profile(int32_t on);
int f2_cuda_profile_report(char *buf, size_t size);
typedef struct f2_cuda_graph f2_cuda_graph;
int f2_cuda_graph_begin(void);
f2_cuda_graph *f2_cuda_graph_end(void);
int f2_cuda_graph_launch(const f2_cuda_graph *g);
void f2_cuda_graph_free(f2_cuda_graph *g);   /* NULL is fine */
int f2_cuda_is_capturing(void);              /* 1 between begin and end */

/* ---------------------------------------------------------------- Fairy2i quantization (FAIRY2I.md)
 * runtime/fairy2.c (CPU reference, dispatch) and kernels/fairy2.cu; docs/fairy2.md has the details.
 * R is a layer's real weight, f32, contiguous, (2n x 2m) = (out x in), both even. U and W are its
 * complex (n x m) halves, each stored as separate re/im f32 planes. Shapes of the other tensors:
 *   scales f32 (T, 4, S): per stage t, [U re, U im, W re, W im] scales of each of S scale groups;
 *                         S = 1 (per tensor), n (per output row), n * ceil(m / G) (per row and group
 *                         of G complex input columns, row-major: group g of row i is i*ceil(m/G) + g).
 *   codes  u8  (T, 2, n, m): per stage, the code k of U ([t][0]) and W ([t][1]): i^k, k in 0..3.
 *   packed u8  (..., ceil(m/4)): codes 2 bits each, column j at bits 2*(j%4) of byte j/4. */
enum { F2_FAIRY2_PER_TENSOR = 0, F2_FAIRY2_PER_ROW = 1, F2_FAIRY2_PER_GROUP = 2 };
typedef struct f2_quant_config {
  int32_t stages;             /* T >= 1 residual stages (1: W1, 2: W2) */
  int32_t granularity;        /* F2_FAIRY2_PER_TENSOR (the authors' default), _PER_ROW, _PER_GROUP */
  int32_t group_size;         /* G >= 1 complex input columns per group, for _PER_GROUP */
  int32_t skip_finite_check;  /* 1: don't fail on NaN/Inf in R (and on a GPU, don't wait to find
                                 out); the scales of such a layer come out NaN, poisoning R_hat */
} f2_quant_config;

/* S, the scale groups per matrix for a (rows x cols) R; -1 (with a message) when cfg or the shape is bad. */
int64_t f2_fairy2_scale_groups(const f2_quant_config *cfg, int64_t rows, int64_t cols);
/* R (2n x 2m) -> U, W planes (n x m each) and back; exact up to fp32 rounding. */
int f2_fairy2_split(f2_tensor *u_re, f2_tensor *u_im, f2_tensor *w_re, f2_tensor *w_im, const f2_tensor *r);
int f2_fairy2_rebuild(f2_tensor *r, const f2_tensor *u_re, const f2_tensor *u_im, const f2_tensor *w_re,
                      const f2_tensor *w_im);
/* The fused quantize-and-rebuild: R -> R_hat (f32 or bf16, R's shape; NULL: not written), scales
 * (required) and codes (NULL: not written). Deterministic, and CPU and CUDA give the same bits. */
int f2_fairy2_quantize(f2_tensor *r_hat, f2_tensor *scales, f2_tensor *codes, const f2_tensor *r,
                       const f2_quant_config *cfg);
/* The same for count layers sharing cfg (r_hat[i] and codes[i] may be NULL; the arrays may not):
 * on a GPU a few launches for all of them instead of a few per layer. */
int f2_fairy2_quantize_batch(f2_tensor *const *r_hat, f2_tensor *const *scales, f2_tensor *const *codes,
                             const f2_tensor *const *r, int32_t count, const f2_quant_config *cfg);
/* R_hat from codes and scales (CPU): the same bits f2_fairy2_quantize wrote. */
int f2_fairy2_dequantize(f2_tensor *r_hat, const f2_tensor *scales, const f2_tensor *codes,
                         const f2_quant_config *cfg);
/* codes (..., m) u8 <-> packed (..., ceil(m/4)) u8 (CPU); unpack rejects non-zero padding bits. */
int f2_fairy2_pack(f2_tensor *packed, const f2_tensor *codes);
int f2_fairy2_unpack(f2_tensor *codes, const f2_tensor *packed);

/* Diagnostics of one stage t (R on any device; computed on the CPU). */
typedef struct f2_fairy2_stage_stats {
  double rel_error;       /* ||R - R_hat_t|| / ||R||, R_hat_t rebuilt from stages 0..t */
  double real_share_u;    /* fraction of U's entries coded +-1 at stage t (the rest are +-i) */
  double real_share_w;
  double scale_mean[4];   /* [U re, U im, W re, W im] scales, averaged over the scale groups */
} f2_fairy2_stage_stats;
int f2_fairy2_stats(f2_fairy2_stage_stats *out, const f2_tensor *r, const f2_quant_config *cfg); /* out[T] */

/* Activation fake-quantization "A8", per row of the last dim: s = 127 / max(absmax(row), 1e-5),
 * out = clamp(rint(x * s), -128, 127) / s. f32 or bf16 (fp32 math), contiguous; out may be x. */
int f2_fake_quant_int8(f2_tensor *out, const f2_tensor *x);

/* ---------------------------------------------------------------- model ops (CPU reference + CUDA)
 * The Llama/Qwen3 layers, forward and backward (runtime/nn_cpu.c; docs/models.md). Tensors are
 * contiguous; float inputs f32 or bf16 with fp32 math; saved statistics (rstd, lse, losses) and
 * gradients that accumulate (marked +=) are f32; other outputs are overwritten. Every op runs where
 * its tensors are (all on the CPU or all on one GPU: kernels/nn.cu, attention.cu, classifier.cu). On
 * a GPU, ids and targets are not range-checked on the host (that would wait for the GPU): an id
 * outside the vocabulary reads a zero row, a target outside it gives a NaN loss. */

/* out[N,D] = weight[ids[n]]; ids i32 of any shape with N elements, each in [0, V). */
int f2_embedding_forward(f2_tensor *out, const f2_tensor *weight, const f2_tensor *ids);
/* dweight[V,D] += dout[n] at row ids[n]. */
int f2_embedding_backward(f2_tensor *dweight, const f2_tensor *dout, const f2_tensor *ids);

/* RMSNorm over the last dim D: out = weight * x * rstd, rstd[N] = 1/sqrt(mean(x^2) + eps) (NULL when
 * not needed). out may be x. x is [..., D] with N rows (Qwen3's q/k norm: rows are heads). */
int f2_rmsnorm_forward(f2_tensor *out, f2_tensor *rstd, const f2_tensor *x, const f2_tensor *weight, float eps);
/* From dy and the forward's rstd: dx (overwritten) and dweight[D] += (NULL: skipped). */
int f2_rmsnorm_backward(f2_tensor *dx, f2_tensor *dweight, const f2_tensor *dy, const f2_tensor *x,
                        const f2_tensor *weight, const f2_tensor *rstd);
/* RMSNorm fused with the residual add before it (a pre-norm block's h = a + b; x = norm(h)):
 * sum = a + b (sum may be a or b; all one shape), out = norm(sum) and rstd as f2_rmsnorm_forward. */
int f2_rmsnorm_residual_forward(f2_tensor *sum, f2_tensor *out, f2_tensor *rstd, const f2_tensor *a,
                                const f2_tensor *b, const f2_tensor *weight, float eps);
/* f2_rmsnorm_backward adding into dx (dx += d norm / d x) instead of overwriting it, so the residual
 * stream's gradient takes the norm's in the same pass. dx must not alias dy. */
int f2_rmsnorm_backward_add(f2_tensor *dx, f2_tensor *dweight, const f2_tensor *dy, const f2_tensor *x,
                            const f2_tensor *weight, const f2_tensor *rstd);

/* RoPE tables: cos/sin[P, Dh/2] at positions 0..P-1 from inv_freq[Dh/2] (angle = p * inv_freq as fp32). */
int f2_rope_tables(f2_tensor *cos_table, f2_tensor *sin_table, const f2_tensor *inv_freq);
/* HF rotate-half RoPE on x[B,T,H,Dh]: pairs (i, i + Dh/2); position t uses table row t (narrow the
 * tables for an offset). out may be x. Backward rotates by the opposite angle. out and x may also be
 * row-strided: each (b, t) row of H*Dh contiguous elements at one row stride of its own (the heads
 * inside a fused q/k/v projection's rows); other overlaps of out and x are undefined. */
int f2_rope_forward(f2_tensor *out, const f2_tensor *x, const f2_tensor *cos_table, const f2_tensor *sin_table);
int f2_rope_backward(f2_tensor *dx, const f2_tensor *dout, const f2_tensor *cos_table, const f2_tensor *sin_table);
/* A fused q/k/v projection's rows y[B*T, (H + 2 Hkv) Dh] (q's heads, then k's, then v's; y may be
 * row-strided) into contiguous q[B,T,H,Dh] and k[B,T,Hkv,Dh], rotated as f2_rope_forward, and v[B,T,Hkv,Dh]
 * copied: one pass instead of two RoPEs and a copy. The backward writes dq and dk rotated back and dv
 * into the rows of dy. One dtype (f32 or bf16) for every tensor but the tables. */
int f2_qkv_rope_forward(f2_tensor *q, f2_tensor *k, f2_tensor *v, const f2_tensor *y, const f2_tensor *cos_table,
                        const f2_tensor *sin_table);
int f2_qkv_rope_backward(f2_tensor *dy, const f2_tensor *dq, const f2_tensor *dk, const f2_tensor *dv,
                         const f2_tensor *cos_table, const f2_tensor *sin_table);

/* Causal attention with grouped KV heads: q/out[B,T,H,Dh], k/v[B,T,Hkv,Dh], H a multiple of Hkv, query
 * head h reads KV head h / (H/Hkv); softmax(scale * q k^T) v. lse[B,H,T] (log-sum-exp of the scaled
 * scores, NULL when not needed) is what the backward needs besides out. dq, dk, dv are overwritten; f32
 * (on a GPU also bf16). On a GPU: flash attention (tiles, online softmax, no T x T matrix), deterministic. */
int f2_attention_forward(f2_tensor *out, f2_tensor *lse, const f2_tensor *q, const f2_tensor *k, const f2_tensor *v,
                         float scale);
int f2_attention_backward(f2_tensor *dq, f2_tensor *dk, f2_tensor *dv, const f2_tensor *dout, const f2_tensor *q,
                          const f2_tensor *k, const f2_tensor *v, const f2_tensor *out, const f2_tensor *lse,
                          float scale);
/* The same attention for incremental decoding against a KV cache: q/out[B,Tq,H,Dh] are the queries at
 * positions n_past .. n_past+Tq-1; k_cache/v_cache[B,Tmax,Hkv,Dh] hold the (rotated) keys and values of
 * positions 0 .. n_past+Tq-1 (the new ones written already), n_past + Tq <= Tmax. Query i attends to
 * keys 0 .. n_past+i, so out equals rows n_past.. of f2_attention_forward over the whole sequence. */
int f2_attention_decode(f2_tensor *out, const f2_tensor *q, const f2_tensor *k_cache, const f2_tensor *v_cache,
                        int64_t n_past, float scale);

/* SwiGLU: out = silu(gate) * up, all one shape. The backward may write dgate/dup over gate/up. Every
 * operand may be row-strided: rows of its last dim contiguous, at one row stride of its own (the gate
 * and up column halves of a fused projection's rows). */
int f2_swiglu_forward(f2_tensor *out, const f2_tensor *gate, const f2_tensor *up);
int f2_swiglu_backward(f2_tensor *dgate, f2_tensor *dup, const f2_tensor *dout, const f2_tensor *gate,
                       const f2_tensor *up);

/* Cross-entropy over logits[..., V] (N rows) and targets i32 [N]: loss (one f32) = mean over rows whose
 * target is not ignore_index of logsumexp(row) - row[target]; losses[N] per row (0 where ignored; NULL
 * when not needed). No counted row: loss 0 and gradient 0. The backward writes
 * dlogits = dloss * d(loss)/d(logits) (dloss: the gradient of the mean loss); dlogits may be logits. */
int f2_cross_entropy_forward(f2_tensor *loss, f2_tensor *losses, const f2_tensor *logits, const f2_tensor *targets,
                             int32_t ignore_index);
int f2_cross_entropy_backward(f2_tensor *dlogits, const f2_tensor *logits, const f2_tensor *targets,
                              int32_t ignore_index, float dloss);

/* The LM head fused with softmax cross-entropy, chunk_rows rows at a time (0: a default) so the [N, V]
 * logits never exist whole: logits = h weight^T with h [N, D] and weight [V, D] (f32 or bf16, one
 * dtype; fp32 accumulation), then loss, losses and targets as f2_cross_entropy_forward. With dh not
 * NULL also the backward of dloss * loss: dh [N, D] in h's dtype (overwritten) and, unless dweight is
 * NULL, dweight [V, D] f32 += dlogits^T h. Results match the unfused ops up to the logits' rounding
 * (a bf16 chunk of logits on a GPU). */
int f2_lm_head_cross_entropy(f2_tensor *loss, f2_tensor *losses, f2_tensor *dh, f2_tensor *dweight,
                             const f2_tensor *h, const f2_tensor *weight, const f2_tensor *targets,
                             int32_t ignore_index, float dloss, int64_t chunk_rows);

/* ---------------------------------------------------------------- files: safetensors, GGUF
 * Readers mmap the file and validate every header field against it (errors name the file and the
 * tensor or key). Tensors handed out are CPU tensors: zero-copy views over the mapping where the
 * bytes are usable as stored (they keep the mapping alive after close), fresh tensors otherwise. */
typedef struct f2_safetensors f2_safetensors;
f2_safetensors *f2_safetensors_open(const char *path);
void f2_safetensors_close(f2_safetensors *st);
int64_t f2_safetensors_count(const f2_safetensors *st);                 /* tensors, in file order */
const char *f2_safetensors_name(const f2_safetensors *st, int64_t i);
int64_t f2_safetensors_find(const f2_safetensors *st, const char *name); /* -1 when absent */
int32_t f2_safetensors_dtype(const f2_safetensors *st, int64_t i);
int32_t f2_safetensors_shape(int64_t *shape, const f2_safetensors *st, int64_t i);  /* shape[8]; returns ndim */
f2_tensor *f2_safetensors_tensor(const f2_safetensors *st, int64_t i);
int64_t f2_safetensors_metadata_count(const f2_safetensors *st);        /* __metadata__: string -> string */
const char *f2_safetensors_metadata_key(const f2_safetensors *st, int64_t i);
const char *f2_safetensors_metadata_value(const f2_safetensors *st, int64_t i);
/* Writes CPU tensors (any strides) in the given order plus metadata to "<path>.tmp", fsyncs it and
 * renames it to path: the file is either whole or absent. */
int f2_safetensors_save(const char *path, const char *const *names, const f2_tensor *const *tensors, int64_t count,
                        const char *const *metadata_keys, const char *const *metadata_values, int64_t metadata_count);

typedef struct f2_gguf f2_gguf;
/* GGUF metadata value types (as in the file). */
enum {
  F2_GGUF_UINT8 = 0, F2_GGUF_INT8 = 1, F2_GGUF_UINT16 = 2, F2_GGUF_INT16 = 3, F2_GGUF_UINT32 = 4,
  F2_GGUF_INT32 = 5, F2_GGUF_FLOAT32 = 6, F2_GGUF_BOOL = 7, F2_GGUF_STRING = 8, F2_GGUF_ARRAY = 9,
  F2_GGUF_UINT64 = 10, F2_GGUF_INT64 = 11, F2_GGUF_FLOAT64 = 12
};
f2_gguf *f2_gguf_open(const char *path);
void f2_gguf_close(f2_gguf *g);
uint32_t f2_gguf_version(const f2_gguf *g);
uint32_t f2_gguf_alignment(const f2_gguf *g);
int64_t f2_gguf_metadata_count(const f2_gguf *g);
const char *f2_gguf_metadata_key(const f2_gguf *g, int64_t i);
int64_t f2_gguf_metadata_find(const f2_gguf *g, const char *key);      /* -1 when absent */
int32_t f2_gguf_metadata_type(const f2_gguf *g, int64_t i);            /* F2_GGUF_* */
int32_t f2_gguf_metadata_array_type(const f2_gguf *g, int64_t i);      /* element type; -1 if no array */
int64_t f2_gguf_metadata_array_count(const f2_gguf *g, int64_t i);     /* -1 if no array */
/* Value j of entry i (j = 0 for a scalar). Numbers (and bools) as double; strings point into the
 * mapping, len bytes, not NUL-terminated, valid until close. */
int f2_gguf_metadata_number(double *out, const f2_gguf *g, int64_t i, int64_t j);
int f2_gguf_metadata_string(const char **str, int64_t *len, const f2_gguf *g, int64_t i, int64_t j);
const char *f2_gguf_value_type_name(int32_t type);
int64_t f2_gguf_tensor_count(const f2_gguf *g);
const char *f2_gguf_tensor_name(const f2_gguf *g, int64_t i);
int64_t f2_gguf_tensor_find(const f2_gguf *g, const char *name);       /* -1 when absent */
int32_t f2_gguf_tensor_type(const f2_gguf *g, int64_t i);              /* ggml type code */
const char *f2_gguf_type_name(int32_t ggml_type);                     /* "Q4_1", ... */
int32_t f2_gguf_tensor_shape(int64_t *shape, const f2_gguf *g, int64_t i);  /* shape[4], row-major; returns ndim */
/* dtype -1: as stored (F32/F16/BF16/I8/I32/I64 zero-copy; Q8_0/Q4_0/Q4_1 dequantized to f32);
 * F2_F32 or F2_BF16: float and quantized types converted (zero-copy when already so). */
f2_tensor *f2_gguf_tensor(const f2_gguf *g, int64_t i, int32_t dtype);
/* Undoes llama.cpp's rotary row permutation of a q or k weight (or bias): per head, the row at
 * 2 r + s goes to s * head_dim / 2 + r. out and in: contiguous CPU, same shape and dtype, 1-D or 2-D. */
int f2_gguf_unpermute_rows(f2_tensor *out, const f2_tensor *in, int32_t n_head);

/* ---------------------------------------------------------------- tokenizer
 * runtime/tokenizer.c, docs/tokenizer.md: byte-level BPE, exact with Hugging Face tokenizers for the
 * pre-tokenizers below. Built from plain arrays, so tokenizer.json and GGUF metadata both feed it
 * (lua/fairy2/tokenizer.lua). Immutable once built: encode/decode may run on many threads at once. */
typedef struct f2_tokenizer f2_tokenizer;
enum {
  F2_PRETOK_GPT2 = 0,    /* ByteLevel(use_regex=true): the GPT-2 regex */
  F2_PRETOK_SMOLLM = 1,  /* Sequence[Digits(individual_digits=true), ByteLevel(use_regex=true)] */
  F2_PRETOK_QWEN2 = 2    /* Sequence[Split(Qwen2 regex, Isolated), ByteLevel(use_regex=false)] */
};
enum { F2_ADDED_SPECIAL = 1, F2_ADDED_NORMALIZED = 2 };   /* bits of f2_tokenizer_spec.added_flags */
enum { F2_TOKEN_BOS = 0, F2_TOKEN_EOS = 1, F2_TOKEN_PAD = 2, F2_TOKEN_UNK = 3 };
typedef struct f2_tokenizer_spec {
  const char *const *vocab;        /* n_vocab model tokens in byte-level form ("Ġthe"); index = id, NULL = none */
  int32_t n_vocab;
  const char *const *merge_left;   /* n_merges merges in rank order, as (left, right) vocab strings */
  const char *const *merge_right;
  int32_t n_merges;
  const char *const *added;        /* n_added added tokens: raw text, split out of the input first */
  const int32_t *added_ids;        /* their ids (may be >= n_vocab) */
  const int32_t *added_flags;      /* F2_ADDED_* bits each; NULL = all special, not normalized */
  int32_t n_added;
  int32_t pretokenizer;            /* F2_PRETOK_* */
  int32_t nfc;                     /* 1: NFC-normalize the text (between added tokens) first: Qwen2/3 */
  int32_t ignore_merges;           /* 1: a pre-token that is a vocab token encodes as that token */
  int32_t fuse_unk;                /* 1: consecutive unknown bytes give one unk_id */
  int32_t bos_id, eos_id, pad_id;  /* -1 when none; informational (encode adds none) */
  int32_t unk_id;                  /* for bytes missing from the vocab; -1: they are dropped (as HF) */
} f2_tokenizer_spec;

/* NULL on failure (message: e.g. a merge naming a token that is not in the vocab). */
f2_tokenizer *f2_tokenizer_new(const f2_tokenizer_spec *spec);
void f2_tokenizer_free(f2_tokenizer *tok);
/* text[0..len) -> ids. Writes the first cap ids and sets *n_ids to the count of all of them, so a
 * call with cap 0 sizes the output (and *n_ids > cap means: call again with more room). At most
 * 3 * len ids (an invalid byte becomes U+FFFD, 3 bytes). Invalid UTF-8 is read as U+FFFD per
 * maximal invalid subpart, as Python's bytes.decode(errors="replace"). */
int f2_tokenizer_encode(const f2_tokenizer *tok, int32_t *ids, int64_t *n_ids, const char *text, int64_t len,
                        int64_t cap);
/* ids -> bytes (each token's bytes; no UTF-8 repair, so a split character passes through as its
 * bytes); first cap bytes written, *n_out = all of them. skip_special: leave special tokens out.
 * An id without a token fails. */
int f2_tokenizer_decode(const f2_tokenizer *tok, char *out, int64_t *n_out, const int32_t *ids, int64_t n_ids,
                        int64_t cap, int32_t skip_special);
/* For tests and tools: the pre-tokenizer alone on valid UTF-8 text (piece end offsets in bytes),
 * and the normalizer alone (invalid UTF-8 replaced, then NFC when the tokenizer has it). */
int f2_tokenizer_pretokenize(const f2_tokenizer *tok, int64_t *ends, int64_t *n_pieces, const char *text,
                             int64_t len, int64_t cap);
int f2_tokenizer_normalize(const f2_tokenizer *tok, char *out, int64_t *n_out, const char *text, int64_t len,
                           int64_t cap);
int32_t f2_tokenizer_vocab_size(const f2_tokenizer *tok);             /* 1 + the largest id */
int32_t f2_tokenizer_special_id(const f2_tokenizer *tok, int32_t which); /* F2_TOKEN_*; -1 when none */
int32_t f2_tokenizer_is_special(const f2_tokenizer *tok, int32_t id);
/* An added token's content or a vocab string (byte-level form) -> id; -1 when none. */
int32_t f2_tokenizer_token_to_id(const f2_tokenizer *tok, const char *token);
/* The token string of id (added content, else vocab string); NULL when none. Owned by tok. */
const char *f2_tokenizer_id_to_token(const f2_tokenizer *tok, int32_t id);

/* ---------------------------------------------------------------- optimizer */
/* AdamW over one fp32 parameter tensor and its fp32 moments, decoupled weight decay, bias correction
 * (PyTorch's AdamW): p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr * (m / (1-b1^step)) / (sqrt(v / (1-b2^step)) + eps), with g = grad * grad_scale (clipping).
 * step counts optimizer updates from 1. grad may be f32 or bf16. All four tensors contiguous, same numel. */
typedef struct f2_adamw_config {
  float lr, beta1, beta2, eps, weight_decay, grad_scale;
  int64_t step;
} f2_adamw_config;
int f2_adamw_step(f2_tensor *param, f2_tensor *m, f2_tensor *v, const f2_tensor *grad, const f2_adamw_config *cfg);
/* The same update with its per-step scalars read from device memory (a CUDA graph replays the kernel
 * arguments it captured, so what changes per step cannot be one): hparams f32 [F2_ADAMW_HPARAMS] on the
 * parameter's device holds lr, beta1, beta2, eps, weight_decay, 1 - beta1^step, 1 - beta2^step and
 * max_norm; sumsq f32 [1] the global sum of squares of the gradients (f2_sum_squares), from which
 * grad_scale = max_norm / sqrt(sumsq) when that norm exceeds max_norm > 0, else 1. A non-finite sumsq
 * skips the update: param, m and v stay as they are. */
enum {
  F2_ADAMW_LR = 0, F2_ADAMW_BETA1, F2_ADAMW_BETA2, F2_ADAMW_EPS, F2_ADAMW_WEIGHT_DECAY, F2_ADAMW_BC1,
  F2_ADAMW_BC2, F2_ADAMW_MAX_NORM, F2_ADAMW_HPARAMS
};
int f2_adamw_step_dev(f2_tensor *param, f2_tensor *m, f2_tensor *v, const f2_tensor *grad, const f2_tensor *hparams,
                      const f2_tensor *sumsq);
/* Sum of squares of every element of each of the n tensors, in a fixed order, into out (f32, 1 element
 * on the tensors' device): the global gradient norm is sqrt(out). */
int f2_sum_squares(f2_tensor *out, const f2_tensor *const *tensors, int32_t n);

/* ---------------------------------------------------------------- data: token shards and loader */
/* A token shard (shards.c; byte layout in docs/data.md): a 256-byte little-endian header, then the
 * tokens as uint16 or uint32; every document is followed by the EOS id. Files are written to
 * "<path>.tmp", fsync'd and renamed, so a shard that exists is complete. */
typedef struct f2_shard_info {
  int64_t token_count;
  int64_t document_count;
  int32_t version;
  int32_t token_bytes;      /* 2 (uint16) or 4 (uint32) */
  int32_t vocab_size;       /* every token is in [0, vocab_size) */
  int32_t eos_id;
  uint64_t tokenizer_id;    /* which tokenizer made it; the shards of one loader must agree */
  uint64_t content_hash;    /* f2_hash64(token bytes, 0) */
} f2_shard_info;

/* A fast 64-bit hash of bytes (word-wise, little-endian; docs/data.md defines it). Also decides the
 * held-out split, so its values must never change. */
uint64_t f2_hash64(const void *data, size_t size, uint64_t seed);

typedef struct f2_shard_writer f2_shard_writer;
/* token_bytes 2 needs vocab_size <= 65536; 0 picks 2 or 4 from vocab_size. */
f2_shard_writer *f2_shard_writer_new(const char *path, int32_t token_bytes, int32_t vocab_size, int32_t eos_id,
                                     uint64_t tokenizer_id);
/* Appends one document: its count tokens (each in [0, vocab_size)), then the EOS id. */
int f2_shard_writer_add(f2_shard_writer *w, const int32_t *tokens, int64_t count);
/* Writes the header, fsyncs, renames "<path>.tmp" to path; info (may be NULL) gets the header. */
int f2_shard_writer_finish(f2_shard_info *info, f2_shard_writer *w);
/* Frees the writer and removes an unfinished file. NULL is fine. */
void f2_shard_writer_free(f2_shard_writer *w);

typedef struct f2_shard f2_shard;
/* Maps a shard and validates its header (magic, version, width, header check, size vs count). */
f2_shard *f2_shard_open(const char *path);
void f2_shard_close(f2_shard *s);   /* NULL is fine */
int f2_shard_get_info(f2_shard_info *out, const f2_shard *s);
const char *f2_shard_path(const f2_shard *s);
/* out[i] = token start + i, for count tokens inside the shard. */
int f2_shard_read(int32_t *out, const f2_shard *s, int64_t start, int64_t count);
/* Reads every token: the content hash must match and every id be below vocab_size. */
int f2_shard_verify(const f2_shard *s);

/* The loader (loader.c; the sampling rule in docs/data.md). Sources are lists of shards with a
 * weight. Sample i of step s is a window of seq_len + 1 tokens inside one shard: the source drawn
 * by weight, the start uniform over that source's window starts, both from f2_rng_bits keyed by
 * (seed, step, i) only, so a resumed run sees the batches it would have seen. */
typedef struct f2_loader f2_loader;
typedef struct f2_window {
  int32_t source;    /* index in the order sources were added */
  int32_t shard;     /* index within that source */
  int64_t start;     /* first token of the window in that shard */
} f2_window;
f2_loader *f2_loader_new(int32_t seq_len, uint64_t seed);
void f2_loader_free(f2_loader *l);   /* NULL is fine */
/* Opens count shards as one source drawn with probability weight / (sum of weights); weight >= 0.
 * Every shard of a loader must come from one tokenizer. */
int f2_loader_add_source(f2_loader *l, double weight, const char *const *paths, int32_t count);
/* Where sample `sample` of step `step` comes from. */
int f2_loader_window(f2_window *out, const f2_loader *l, int64_t step, int64_t sample);
/* Fills B rows with samples first_sample .. first_sample + B - 1 of step: inputs and targets are
 * i32 CPU contiguous [B, seq_len] (targets = inputs shifted by one token), or inputs alone is
 * [B, seq_len + 1] and targets NULL. */
int f2_loader_batch(f2_tensor *inputs, f2_tensor *targets, const f2_loader *l, int64_t step, int64_t first_sample);
/* The evaluation walk: every shard of every source in order, in windows whose targets are the next
 * seq_len tokens not scored yet, so each token but a shard's first is scored exactly once (the last
 * window of a shard reads back to stay full; targets already scored, or past a short shard's end,
 * are -1 = ignore). */
int64_t f2_loader_eval_windows(const f2_loader *l);
/* Rows = windows first_window ..; rows past the last window get EOS inputs and -1 targets. inputs and
 * targets are i32 CPU contiguous [B, seq_len]. *scored (may be NULL) = the number of targets != -1. */
int f2_loader_eval_batch(f2_tensor *inputs, f2_tensor *targets, int64_t *scored, const f2_loader *l,
                         int64_t first_window);

/* Text files to one shard (tokenize_files.c): a path ending ".jsonl" holds one document per line
 * (an object with a string field "text"; blank lines skipped), any other path is one document.
 * Empty documents are skipped. threads (0: all cores) encode batches of documents in parallel; the
 * shard is the same for any thread count. token_bytes 0 picks 2 or 4 from the vocab size. */
typedef struct f2_tokenize_stats {
  int64_t documents;         /* written */
  int64_t empty_documents;   /* skipped */
  int64_t bytes;             /* text bytes encoded */
  int64_t tokens;            /* in the shard, EOS ids included */
  uint64_t content_hash;
  double seconds;            /* wall time */
} f2_tokenize_stats;
int f2_tokenize_files(f2_tokenize_stats *stats, const char *out_path, const f2_tokenizer *tok,
                      const char *const *in_paths, int32_t count, int32_t token_bytes, int32_t eos_id,
                      uint64_t tokenizer_id, int32_t threads);
/* A fingerprint of a tokenizer for f2_shard_info.tokenizer_id: f2_hash64 over its vocab strings,
 * special flags and ids and the ids of a fixed probe text, so the same tokenizer loaded from
 * tokenizer.json or from GGUF metadata gets the same id. */
int f2_data_tokenizer_id(uint64_t *out, const f2_tokenizer *tok);

/* ---------------------------------------------------------------- signals (training runs)
 * signals.c: while watching, SIGTERM and SIGINT only record the signal; a run polls
 * f2_signal_pending() between steps, saves and exits. A second signal while one is pending ends the
 * process the default way. unwatch restores the handlers that were there before (the REPL's). */
int f2_signal_watch(void);
int32_t f2_signal_pending(void);    /* the signal number caught since watch, 0 when none */
int f2_signal_unwatch(void);

/* ---------------------------------------------------------------- line editor (REPL) */
/* The REPL's line editor (lineedit.c). On a terminal: raw-mode editing (arrows, Home/End,
 * Ctrl-A/E/B/F/K/U/W/L, Backspace/Delete, Up/Down history, Tab completion), UTF-8 aware. When stdin
 * or stdout is not a terminal: plain line reads, no escape codes, and a prompt (on stderr) only when
 * stdin is a terminal. History lives in a file, appended per line and trimmed to history_max
 * entries when opened (history_path may be NULL). */
typedef struct f2_lineedit f2_lineedit;
enum { F2_LINE_OK = 0, F2_LINE_EOF = 1, F2_LINE_INTERRUPT = 2, F2_LINE_COMPLETE = 3 };
f2_lineedit *f2_lineedit_new(const char *history_path, int32_t history_max);
void f2_lineedit_free(f2_lineedit *e);
int f2_lineedit_is_terminal(const f2_lineedit *e);
/* Reads a line. Returns F2_LINE_OK (the line is f2_lineedit_text), F2_LINE_EOF (Ctrl-D on an empty
 * line, or end of input), F2_LINE_INTERRUPT (Ctrl-C: the line was dropped), F2_LINE_COMPLETE (Tab:
 * answer with f2_lineedit_complete, then call f2_lineedit_read again to go on editing the same
 * line), or a negative status. The terminal is back in normal mode when this returns anything
 * but F2_LINE_COMPLETE (and when the editor is freed or the process exits). */
int f2_lineedit_read(f2_lineedit *e, const char *prompt);
const char *f2_lineedit_text(const f2_lineedit *e);
int32_t f2_lineedit_cursor(const f2_lineedit *e);    /* byte offset of the cursor in the text */
/* Replaces the text from byte offset start to the cursor: with the one candidate, or with the
 * candidates' longest common prefix; when that adds nothing, lists the candidates. */
int f2_lineedit_complete(f2_lineedit *e, int32_t start, int32_t count, const char *const *candidates);
int f2_lineedit_history_add(f2_lineedit *e, const char *line);   /* skips blanks and repeats */
/* Ctrl-C during a REPL statement (main.c; the fairy2 executable only): arm installs a SIGINT
 * handler that makes the running Lua code raise "interrupted" (a second Ctrl-C before that ends
 * the process); disarm restores the default SIGINT. */
int f2_repl_interrupt_arm(void);
int f2_repl_interrupt_disarm(void);

/* F2_FFI_END */

#ifdef __cplusplus
}
#endif
#endif
