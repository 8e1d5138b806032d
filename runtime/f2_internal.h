/* f2_internal.h — what the runtime's C files share and Lua never sees: error macros, storage,
 * the CUDA entry points that ops dispatch to. Included by the runtime C files and the kernels. */
#ifndef F2_INTERNAL_H
#define F2_INTERNAL_H
#include "f2.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Everything declared here stays inside the runtime: only f2.h is exported from the binary
 * (tests/lua/test_header.lua checks that every exported f2_ symbol is declared in f2.h). */
#pragma GCC visibility push(hidden)

/* Records "file:line: message" for f2_last_error() and returns code. */
int f2_set_error(int code, const char *file, int line, const char *fmt, ...)
#ifdef __GNUC__
    __attribute__((format(printf, 4, 5)))
#endif
    ;
#define F2_FAIL(code, ...) f2_set_error((code), __FILE__, __LINE__, __VA_ARGS__)
/* Returns the status of expr from the current function when it failed. */
#define F2_TRY(expr) do { int f2_try_rc_ = (expr); if (f2_try_rc_ != F2_OK) return f2_try_rc_; } while (0)
/* For constructors that return NULL on failure. */
#define F2_FAIL_NULL(code, ...) (F2_FAIL((code), __VA_ARGS__), (void *)0)

struct f2_storage {
  void *ptr;
  size_t nbytes;
  int32_t device;
  int32_t refcount;
  int32_t borrowed;               /* wrapped memory: never freed here */
  void (*release)(void *owner);   /* wrapped memory: called with owner (if set) when the last view goes */
  void *owner;
};

/* Storage lifetime (tensor.c). */
f2_storage *f2_storage_new(int32_t device, size_t nbytes);
void f2_storage_retain(f2_storage *s);
void f2_storage_release(f2_storage *s);
/* A fresh handle on s (retained) with the given geometry. */
f2_tensor *f2_tensor_make(f2_storage *s, void *data, int32_t dtype, int32_t device, int32_t ndim,
                          const int64_t *shape, const int64_t *stride);

/* Shape checks shared by the ops; each returns F2_OK or fails with a message naming `what`. */
int f2_check_same_device(const char *what, const f2_tensor *a, const f2_tensor *b);
int f2_check_same_shape(const char *what, const f2_tensor *a, const f2_tensor *b);
int f2_check_float(const char *what, const f2_tensor *t);

/* The argument check every model op makes (nn_cpu.c): t present, on the CPU or a GPU, contiguous, and
 * of kind's dtypes (F2_ARG_FLOAT: f32 or bf16). */
enum { F2_ARG_FLOAT = 1, F2_ARG_F32 = 2, F2_ARG_I32 = 4 };
int f2_check_arg(const char *op, const char *name, const f2_tensor *t, int kind);
/* t is [..., cols] with rows * cols elements. */
int f2_check_rows_cols(const char *op, const char *name, const f2_tensor *t, int64_t rows, int64_t cols);
/* The n tensors (NULLs skipped) are on one device; *gpu = 1 when that is a GPU. names (may be NULL:
 * the message then counts arguments) name them in the message. */
int f2_check_one_device(const char *op, int *gpu, const f2_tensor *const *t, const char *const *names, int n);
/* "[2,3]": t's shape into buf. */
const char *f2_shape_str(const f2_tensor *t, char *buf, size_t size);

/* bf16 / f16 conversions (round to nearest even; NaN stays NaN). */
static inline float f2_bf16_to_f32(uint16_t h) {
  union { uint32_t u; float f; } v;
  v.u = (uint32_t)h << 16;
  return v.f;
}
static inline uint16_t f2_f32_to_bf16(float f) {
  union { uint32_t u; float f; } v;
  v.f = f;
  if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40u); /* quiet NaN */
  uint32_t rounding = 0x7fffu + ((v.u >> 16) & 1u);
  return (uint16_t)((v.u + rounding) >> 16);
}
float f2_f16_to_f32(uint16_t h);
uint16_t f2_f32_to_f16(float f);

/* GPU caching allocator (kernels/alloc.cu). Plain cudaMalloc underneath, never managed memory. */
int f2_cuda_alloc(void **ptr, size_t nbytes);
void f2_cuda_free(void *ptr);
int f2_cuda_require(const char *what);   /* F2_OK, or F2_ERR_NO_DEVICE with a clear message */
int f2_cuda_build_info(char *buf, size_t size);   /* CUDA/cuBLAS/NCCL versions and GPUs, for f2_build_info */

/* CUDA halves of the tensor ops (kernels/; cuda_stub.c without CUDA). The dispatch in
 * ops.c checks arguments and devices first, so these see valid, same-device GPU tensors. */
enum { F2_MEMCPY_H2D = 0, F2_MEMCPY_D2H = 1, F2_MEMCPY_D2D = 2 };
int f2_cuda_memcpy(void *dst, const void *src, size_t nbytes, int kind);   /* synchronous for D2H */
int f2_cuda_copy(f2_tensor *dst, const f2_tensor *src);                    /* strided + dtype cast */
int f2_cuda_fill(f2_tensor *t, double value);
int f2_cuda_rand_uniform(f2_tensor *t, uint64_t seed, double low, double high);
int f2_cuda_rand_normal(f2_tensor *t, uint64_t seed, double mean, double std);
int f2_cuda_binary(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t op);
int f2_cuda_binary_scalar(f2_tensor *out, const f2_tensor *a, double s, int32_t op);
int f2_cuda_unary(f2_tensor *out, const f2_tensor *a, int32_t op);
int f2_cuda_reduce(f2_tensor *out, const f2_tensor *x, int32_t dim, int32_t op);
int f2_cuda_matmul(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t trans_a, int32_t trans_b,
                   float alpha, float beta);
/* out = alpha op(a) op(b) + beta c, c a different tensor of out's shape and dtype (cuBLASLt's C and D). */
int f2_cuda_matmul_add(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t trans_a, int32_t trans_b,
                       float alpha, const f2_tensor *c, float beta);

/* Allocator pools for CUDA graphs (kernels/alloc.cu, used by graph.cu): begin starts a pool that serves
 * every allocation until end; release hands a pool's free blocks back to the global cache. */
int f2_cuda_pool_begin(void);
void f2_cuda_pool_end(void);
void f2_cuda_pool_release(int pool);

/* Optimizer (kernels/optim.cu; stubs in optim.c without CUDA). */
int f2_cuda_adamw_step(f2_tensor *p, f2_tensor *m, f2_tensor *v, const f2_tensor *g, const f2_adamw_config *c);
int f2_cuda_sum_squares(f2_tensor *out, const f2_tensor *const *tensors, int32_t n);

/* ---- kernel-family timing (kernels/profile.cu; no-ops without CUDA): F2_PROFILED(name, call) runs
 * call between two CUDA events when profiling is on, and returns its status. */
int f2_prof_begin(const char *name);
int f2_prof_end(int slot, int rc);
#define F2_PROFILED(name, call) __extension__({ int f2_prof_slot_ = f2_prof_begin(name); f2_prof_end(f2_prof_slot_, (call)); })

/* ---- model ops (kernels/nn.cu, attention.cu, classifier.cu; cuda_stub_nn.c without CUDA). The
 * dispatch in nn_cpu.c / classifier.c checks shapes, dtypes and devices first. */
int f2_cuda_embedding_forward(f2_tensor *out, const f2_tensor *weight, const f2_tensor *ids);
int f2_cuda_embedding_backward(f2_tensor *dweight, const f2_tensor *dout, const f2_tensor *ids);
int f2_cuda_rmsnorm_forward(f2_tensor *out, f2_tensor *rstd, const f2_tensor *x, const f2_tensor *weight, float eps);
int f2_cuda_rmsnorm_residual_forward(f2_tensor *sum, f2_tensor *out, f2_tensor *rstd, const f2_tensor *a,
                                     const f2_tensor *b, const f2_tensor *weight, float eps);
/* accumulate: 0 dx = ..., 1 dx += ... */
int f2_cuda_rmsnorm_backward(f2_tensor *dx, f2_tensor *dweight, const f2_tensor *dy, const f2_tensor *x,
                             const f2_tensor *weight, const f2_tensor *rstd, int accumulate);
int f2_cuda_rope_tables(f2_tensor *cos_table, f2_tensor *sin_table, const f2_tensor *inv_freq);
/* sign +1 forward, -1 backward. */
int f2_cuda_rope(f2_tensor *out, const f2_tensor *x, const f2_tensor *cos_table, const f2_tensor *sin_table, float sign);
/* y's rows ldy elements apart; merge 0: y -> q, k, v (forward), 1: q, k, v -> y (backward). */
int f2_cuda_qkv_rope(f2_tensor *y, f2_tensor *q, f2_tensor *k, f2_tensor *v, const f2_tensor *cos_table,
                     const f2_tensor *sin_table, int64_t ldy, int merge);
int f2_cuda_swiglu_forward(f2_tensor *out, const f2_tensor *gate, const f2_tensor *up);
int f2_cuda_swiglu_backward(f2_tensor *dgate, f2_tensor *dup, const f2_tensor *dout, const f2_tensor *gate,
                            const f2_tensor *up);
int f2_cuda_cross_entropy_forward(f2_tensor *loss, f2_tensor *losses, const f2_tensor *logits,
                                  const f2_tensor *targets, int32_t ignore_index);
int f2_cuda_cross_entropy_backward(f2_tensor *dlogits, const f2_tensor *logits, const f2_tensor *targets,
                                   int32_t ignore_index, float dloss);
int f2_cuda_attention_forward(f2_tensor *out, f2_tensor *lse, const f2_tensor *q, const f2_tensor *k,
                              const f2_tensor *v, float scale);
int f2_cuda_attention_backward(f2_tensor *dq, f2_tensor *dk, f2_tensor *dv, const f2_tensor *dout, const f2_tensor *q,
                               const f2_tensor *k, const f2_tensor *v, const f2_tensor *out, const f2_tensor *lse,
                               float scale);
int f2_cuda_attention_decode(f2_tensor *out, const f2_tensor *q, const f2_tensor *k_cache, const f2_tensor *v_cache,
                             int64_t n_past, float scale);
int f2_cuda_lm_head_cross_entropy(f2_tensor *loss, f2_tensor *losses, f2_tensor *dh, f2_tensor *dweight,
                                  const f2_tensor *h, const f2_tensor *weight, const f2_tensor *targets,
                                  int32_t ignore_index, float dloss, int64_t chunk_rows);
int f2_cuda_adamw_step_dev(f2_tensor *p, f2_tensor *m, f2_tensor *v, const f2_tensor *g, const f2_tensor *hparams,
                           const f2_tensor *sumsq);
/* ---- end model ops */

/* ---- Fairy2i quantization (kernels/fairy2.cu; stubs in cuda_stub_fairy2.c without CUDA). runtime/fairy2.c
 * checks every argument first. first_bad: NULL, or count slots that receive the flat index into R of
 * the first non-finite element of each layer's R (-1 when none); filling it waits for the GPU. */
int f2_cuda_fairy2_split(f2_tensor *u_re, f2_tensor *u_im, f2_tensor *w_re, f2_tensor *w_im, const f2_tensor *r);
int f2_cuda_fairy2_rebuild(f2_tensor *r, const f2_tensor *u_re, const f2_tensor *u_im, const f2_tensor *w_re,
                           const f2_tensor *w_im);
int f2_cuda_fairy2_quantize(f2_tensor *const *r_hat, f2_tensor *const *scales, f2_tensor *const *codes,
                            const f2_tensor *const *r, int32_t count, const f2_quant_config *cfg,
                            int64_t *first_bad);
int f2_cuda_fake_quant_int8(f2_tensor *out, const f2_tensor *x);
/* ---- end Fairy2i quantization */

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif
#endif
