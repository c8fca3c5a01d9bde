/* LD_PRELOAD library for the LoRA backward comparison (lora-backward-vs-torch.sh).
 *
 * Debian's python3-torch links its fp32 GEMM to the Fortran BLAS symbol sgemm_, which on a bare
 * Debian system resolves to the unoptimised reference BLAS (about 1 GFLOP/s). Preloading this file
 * sends every sgemm_ call to oneDNN's dnnl_sgemm instead (libdnnl.so.2, which torch already loads
 * for its bf16 matmuls; threaded by OpenMP, so torch.set_num_threads applies), standing in for a
 * torch built against MKL.
 *
 * sgemm_ is column-major: C (m×n) = alpha·op(A)·op(B) + beta·C. dnnl_sgemm is row-major. A
 * column-major m×n matrix is the row-major n×m matrix of its transpose, so the call becomes
 * Cᵀ = alpha·op(B)ᵀ·op(A)ᵀ + beta·Cᵀ: swap the operands and their transpose flags, and swap m and n.
 * Leading dimensions carry over unchanged. */
#include <stdint.h>

extern int dnnl_sgemm(char transa, char transb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                      int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

void sgemm_(const char *transa, const char *transb, const int *m, const int *n, const int *k, const float *alpha,
            const float *a, const int *lda, const float *b, const int *ldb, const float *beta, float *c, const int *ldc)
{
    if (*m <= 0 || *n <= 0)
        return;
    dnnl_sgemm(*transb, *transa, *n, *m, *k, *alpha, b, *ldb, a, *lda, *beta, c, *ldc);
}
