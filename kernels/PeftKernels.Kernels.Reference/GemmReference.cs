// C = alpha · op(A) · op(B) + beta · C, row-major, accumulated in double.
//   op(A): [m, k]; A is stored [m, k] (no transpose) or [k, m] (transpose).
//   op(B): [k, n]; B is stored [k, n] (no transpose) or [n, k] (transpose).
// beta = 0 means C is not read (it may hold garbage or NaN), as in BLAS.
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive GEMM with double accumulation: the specification of the fast kernels.</summary>
public static class GemmReference
{
    /// <summary>Computes C = alpha·op(A)·op(B) + beta·C with fp32 operands.</summary>
    public static void Multiply(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, ReadOnlySpan<float> b, float beta, Span<float> c)
    {
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int p = 0; p < k; p++)
                {
                    double av = transA ? a[(p * m) + i] : a[(i * k) + p];
                    double bv = transB ? b[(j * k) + p] : b[(p * n) + j];
                    sum += av * bv;
                }

                double prior = beta == 0 ? 0 : beta * (double)c[(i * n) + j];
                c[(i * n) + j] = (float)((alpha * sum) + prior);
            }
        }
    }

    /// <summary>Same as <see cref="Multiply(bool,bool,int,int,int,float,ReadOnlySpan{float},ReadOnlySpan{float},float,Span{float})"/> with B given as bf16 bit patterns.</summary>
    public static void Multiply(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, ReadOnlySpan<ushort> b, float beta, Span<float> c)
    {
        var wide = new float[b.Length];
        for (int i = 0; i < b.Length; i++)
        {
            wide[i] = Bf16Reference.ToSingle(b[i]);
        }

        Multiply(transA, transB, m, n, k, alpha, a, wide, beta, c);
    }
}
