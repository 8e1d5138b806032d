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
f2_tensor *f2_tensor_as_strided(const f2_tensor *t, int32_t ndim, const int64_t *shape,
                                const int64_t *stride, int64_t offset);

/* ---------------------------------------------------------------- tensor ops
 * Elementwise ops take any strides (broadcast inputs are stride-0 views) and any float dtypes;
 * math is fp32 (fp64 on CPU where it is free), stored in the output's dtype.
 * All tensors of one op live on one device. */

/* dst <- src: any shapes with equal numel? no: equal shapes; any strides, dtypes and devices.
 * This is the one copy: contiguous copy, device transfer and dtype cast (RNE for bf16/f16,
 * NaN stays NaN, Inf and denormals exact where representable; float->int truncates). */
int f2_copy(f2_tensor *dst, const f2_tensor *src);
int f2_fill(f2_tensor *t, double value);
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
 * order (deterministic: same input, same bits). NORM is the L2 norm. */
int f2_reduce(f2_tensor *out, const f2_tensor *x, int32_t dim, int32_t op);
/* out[M,N] = alpha * op(a)[M,K] @ op(b)[K,N] + beta * out, op = transpose when trans_* is set.
 * 2-D, or 3-D batched with equal batch. CPU: fp32 accumulation reference. CUDA: cuBLASLt,
 * bf16 or fp32 inputs, fp32 accumulation. */
int f2_matmul(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t trans_a, int32_t trans_b,
              float alpha, float beta);

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

/* ---------------------------------------------------------------- Fairy2i quantization (FAIRY2I.md) */

/* ---------------------------------------------------------------- model ops (CPU reference + CUDA) */

/* ---------------------------------------------------------------- files: safetensors, GGUF */

/* ---------------------------------------------------------------- tokenizer */

/* ---------------------------------------------------------------- line editor (REPL) */

/* F2_FFI_END */

#ifdef __cplusplus
}
#endif
#endif
