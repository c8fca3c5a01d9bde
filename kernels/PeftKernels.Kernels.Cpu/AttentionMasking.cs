// Masked keys never contribute, even when they hold NaN or ±Inf. Inside a diagonal tile (one
// where some rows of the query tile see fewer keys than the tile holds) the products run over the
// whole tile with the masked probabilities set to exactly 0, which is exact for finite operands
// but turns a NaN or infinity at a masked position into 0·NaN = NaN in an earlier row. So a
// diagonal tile whose operands hold a non-finite value in the masked region runs these
// row-by-row (and key-by-key) products instead, each over the visible part only. Finding out is
// one pass over the few rows involved (at most one tile's worth, against the tile's whole
// product), and clean inputs never leave the blocked path.
using System.Numerics;
using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Cpu;

public static unsafe partial class Attention
{
    /// <summary>Whether all <paramref name="rows"/> rows of <paramref name="n"/> floats at <paramref name="x"/> (row stride <paramref name="stride"/>) are finite.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static bool AllFinite(float* x, int rows, int stride, int n)
    {
        for (int r = 0; r < rows; r++)
        {
            float* row = x + ((long)r * stride);
            int c = 0;
            if (Vector.IsHardwareAccelerated)
            {
                // x − x is 0 for every finite x and NaN for NaN and ±Inf.
                var bad = Vector<float>.Zero;
                for (; c <= n - Vector<float>.Count; c += Vector<float>.Count)
                {
                    var v = Unsafe.ReadUnaligned<Vector<float>>(row + c);
                    bad |= v - v;
                }

                if (!Vector.EqualsAll(bad, Vector<float>.Zero))
                {
                    return false;
                }
            }

            for (; c < n; c++)
            {
                if (!float.IsFinite(row[c]))
                {
                    return false;
                }
            }
        }

        return true;
    }

    /// <summary>
    /// c[r] += Σ_{j &lt; visible(r)} p[r, j]·b_j for the <paramref name="rows"/> rows of a diagonal tile, where row r sees
    /// <c>min(width, first + r)</c> keys (rows that see none are skipped): P·V of the forward, dS·K of the backward.
    /// </summary>
    private static void RowsOverVisibleKeys<TV, T>(float* p, float* b, int ldb, float* c, int ldc, int rows, int first, int width, int n)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        for (int r = 0; r < rows; r++)
        {
            int visible = Math.Min(width, first + r);
            if (visible > 0)
            {
                MulAdd<TV, T>(p + (r * KeyTile), KeyTile, 1, b, ldb, c + ((long)r * ldc), ldc, 1, n, visible, true);
            }
        }
    }

    /// <summary>
    /// c_j += Σ_{r seeing key j} p[r, j]·b_r for the keys of a diagonal tile, where key j is seen by rows r ≥ j − first + 1:
    /// Pᵀ·dO and dSᵀ·Q of the backward.
    /// </summary>
    private static void KeysOverSeeingRows<TV, T>(float* p, float* b, int ldb, float* c, int ldc, int rows, int first, int width, int n)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        for (int j = 0; j < width; j++)
        {
            int r0 = Math.Max(0, j - first + 1);
            if (r0 < rows)
            {
                MulAdd<TV, T>(p + (r0 * KeyTile) + j, 1, KeyTile, b + ((long)r0 * ldb), ldb, c + ((long)j * ldc), ldc, 1, n, rows - r0, true);
            }
        }
    }
}
