// Shape checks of the GEMM C[m, n] = alpha·op(A)·op(B) + beta·C, called by the CPU kernel (Gemm)
// and the GPU launcher (GemmKernels) so both reject a bad argument with the same message:
//   A has m·k elements, B k·n, C m·n; m, n, k ≥ 0.
namespace PeftKernels.Kernels;

/// <summary>Argument checks of the GEMM, shared by the CPU kernel and the GPU launcher.</summary>
internal static class GemmShapes
{
    public static void Multiply(int m, int n, int k, long a, long b, long c)
    {
        Check.NonNegative((m, "m"), (n, "n"), (k, "k"));
        Check.Length("a", a, (long)m * k, "m·k");
        Check.Length("b", b, (long)k * n, "k·n");
        Check.Length("c", c, (long)m * n, "m·n");
    }
}
