// acc[j] += alpha · row[j] over one contiguous row of a weight stored [k, n]: the inner step
// of the small-m path for op(B) = B (no transpose), which streams each weight row once.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

internal static unsafe class RowAxpy
{
    public static void Add(float* row, float alpha, float* acc, int length, SimdPath path) =>
        Add<float, Fp32Load>(row, alpha, acc, length, path);

    public static void Add(ushort* row, float alpha, float* acc, int length, SimdPath path) =>
        Add<ushort, Bf16Load>(row, alpha, acc, length, path);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Add<T, TLoad>(T* row, float alpha, float* acc, int length, SimdPath path)
        where T : unmanaged
        where TLoad : IWidenLoad<T>
    {
        int j = 0;
        if (path == SimdPath.Vector512)
        {
            var va = Vector512.Create(alpha);
            for (; j <= length - 16; j += 16)
            {
                Vector512.FusedMultiplyAdd(va, TLoad.Load512(row + j), Vector512.Load(acc + j)).Store(acc + j);
            }
        }
        else if (path == SimdPath.Vector256)
        {
            var va = Vector256.Create(alpha);
            for (; j <= length - 8; j += 8)
            {
                Vector256.FusedMultiplyAdd(va, TLoad.Load256(row + j), Vector256.Load(acc + j)).Store(acc + j);
            }
        }

        for (; j < length; j++)
        {
            acc[j] += alpha * TLoad.Load(row + j);
        }
    }
}
