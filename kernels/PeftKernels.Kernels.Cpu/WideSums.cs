// Σ x² of an fp32 run in double: each value widened exactly, squared and summed in double lanes
// (two accumulators, the lower and upper halves of each float vector), the lanes summed, then the
// scalar tail added in order. The order is fixed per path, so the result is too. Used by AdamW's
// gradient norm (per block) and DoRA's column norms.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

internal static unsafe class WideSums
{
    /// <summary>Σ x[j]² for j &lt; count, accumulated in double.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static double SumOfSquares(float* x, int count, SimdPath path)
    {
        int j = 0;
        double sum = 0;
        if (path == SimdPath.Vector512)
        {
            sum = SumOfSquares<Vector512<float>, Vector512<double>, V512>(x, count, out j);
        }
        else if (path == SimdPath.Vector256)
        {
            sum = SumOfSquares<Vector256<float>, Vector256<double>, V256>(x, count, out j);
        }

        for (; j < count; j++)
        {
            double d = x[j];
            sum += d * d;
        }

        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static double SumOfSquares<TV, TD, T>(float* x, int count, out int end)
        where TV : unmanaged
        where TD : unmanaged
        where T : struct, IWidenVec<TV, TD>
    {
        int w = T.Width, j = 0;
        TD lo = default, hi = default;
        for (; j <= count - w; j += w)
        {
            var v = T.Load(x + j);
            var vl = T.WidenLower(v);
            var vh = T.WidenUpper(v);
            lo = T.FmaF64(vl, vl, lo);
            hi = T.FmaF64(vh, vh, hi);
        }

        end = j;
        return T.SumF64(T.AddF64(lo, hi));
    }
}
