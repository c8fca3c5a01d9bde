// Attention backward (FlashAttention-2 loop order), the formulas are in Attention.cs. One unit
// is (b, kv head g): it owns dk, dv of g and dq of the query heads of g. Outer loop over key
// tiles (Kᵀ and Vᵀ of the tile packed once, reused by every query row of the group; with at most
// DirectMaxQueries queries, no packing: dot products against the rows), inner loop
// over the query heads of g and the query tiles that see the key tile (i ≥ j0 − offset):
//   S  = Q·Kᵀ                 P = exp(scale·S − lse), masked to 0      [rows, keys]
//   dV += Pᵀ·dO               dP = dO·Vᵀ
//   dS = scale·P ⊙ (dP − D)   dQ += dS·K       dK += dSᵀ·Q
// Only the per-row lse (from the forward) and D = rowsum(dO ⊙ o) are kept, never a whole P.
// dS at masked pairs stays 0 (never computed from a dp that a masked non-finite v makes NaN); a diagonal tile with a
// non-finite k or a row with a non-finite q or dO (seen as a non-finite lse or D) runs dV, dQ, dK over
// the visible pairs only, so a NaN at a masked position never reaches another position's gradient.
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace PeftKernels.Kernels.Cpu;

public static unsafe partial class Attention
{
    private sealed class BackwardJob<TV, T>(Dims d, Io io, int threads)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        private readonly bool _packed = d.QueryLength > DirectMaxQueries;
        private readonly int _scratch = WorkerFloats((2 * KeyTile * d.HeadDim) + (2 * QueryTile * KeyTile) + (d.Group * d.QueryLength));
        private int _workers;
        private float* _work;

        public void Run()
        {
            int units = d.Batch * d.KvHeads;
            _workers = Workers(threads, units, 5 * d.Work / 2);
            _work = (float*)NativeMemory.AlignedAlloc((nuint)((long)_scratch * _workers * sizeof(float)), 64);
            try
            {
                CpuParallel.For(_workers, _workers, Compute);
            }
            finally
            {
                NativeMemory.AlignedFree(_work);
            }
        }

        private void Compute(int worker)
        {
            float* scratch = _work + ((long)worker * _scratch);
            for (int u = worker; u < d.Batch * d.KvHeads; u += _workers)
            {
                Unit(u / d.KvHeads, u % d.KvHeads, scratch);
            }
        }

        /// <summary>c[r, j] = x_r·y_j for rows of q or dO against a key tile of k or v: from the packed tile, or (few queries) by dot products.</summary>
        private void ProductWithKeys(float* x, float* yRows, float* yPacked, float* c, int rows, int width)
        {
            if (_packed)
            {
                MulAdd<TV, T>(x, d.QStride, 1, yPacked, KeyTile, c, KeyTile, rows, width, d.HeadDim, false);
                return;
            }

            for (int r = 0; r < rows; r++)
            {
                Dots<TV, T>(x + ((long)r * d.QStride), yRows, d.KStride, width, d.HeadDim, c + (r * KeyTile));
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void Unit(int b, int g, float* scratch)
        {
            int hd = d.HeadDim;
            float* kt = scratch, vt = kt + (KeyTile * hd), p = vt + (KeyTile * hd), dp = p + (QueryTile * KeyTile);
            float* rowD = dp + (QueryTile * KeyTile);
            for (int j = 0; j < d.KeyLength; j++)
            {
                new Span<float>(io.Dk + d.KRow(b, j, g), hd).Clear();
                new Span<float>(io.Dv + d.KRow(b, j, g), hd).Clear();
            }

            for (int hh = 0; hh < d.Group; hh++)
            {
                int h = (g * d.Group) + hh;
                for (int i = 0; i < d.QueryLength; i++)
                {
                    long row = d.QRow(b, i, h);
                    new Span<float>(io.Dq + row, hd).Clear();
                    rowD[(hh * d.QueryLength) + i] = Dot<TV, T>(io.DO + row, io.O + row, hd);
                }
            }

            float* kb = io.K + d.KRow(b, 0, g), dkb = io.Dk + d.KRow(b, 0, g), dvb = io.Dv + d.KRow(b, 0, g);
            for (int j0 = 0; j0 < d.KeyLength; j0 += KeyTile)
            {
                int width = Math.Min(KeyTile, d.KeyLength - j0);
                int iStart = Math.Max(0, j0 - d.Offset);
                Debug.Assert(iStart < d.QueryLength, "the last key is seen by the last query");
                float* kTile = kb + ((long)j0 * d.KStride), dkTile = dkb + ((long)j0 * d.KStride), dvTile = dvb + ((long)j0 * d.KStride);
                float* vTile = io.V + d.KRow(b, j0, g);
                if (_packed)
                {
                    Pack(kTile, d.KStride, width, hd, kt, KeyTile);
                    Pack(vTile, d.KStride, width, hd, vt, KeyTile);
                }

                bool kFinite = AllFinite(kTile, width, d.KStride, hd);
                for (int hh = 0; hh < d.Group; hh++)
                {
                    int h = (g * d.Group) + hh;
                    float* lse = io.Lse + ((((long)b * d.Heads) + h) * d.QueryLength);
                    for (int i0 = iStart; i0 < d.QueryLength; i0 += QueryTile)
                    {
                        int rows = Math.Min(QueryTile, d.QueryLength - i0);
                        long row0 = d.QRow(b, i0, h);
                        float* qb = io.Q + row0, dob = io.DO + row0;
                        // A diagonal tile (row 0 sees first < width keys) whose masked pairs could meet a non-finite
                        // operand runs the products over the visible pairs only (AttentionMasking.cs): a non-finite
                        // k in the tile, or a row whose q or dO is non-finite (then its lse or D is too).
                        int first = i0 + d.Offset + 1 - j0;
                        bool partial = first < width;
                        bool exact = partial && !(kFinite && AllFinite(lse + i0, 1, 0, rows) && AllFinite(rowD + (hh * d.QueryLength) + i0, 1, 0, rows));
                        ProductWithKeys(qb, kTile, kt, p, rows, width);
                        for (int r = 0; r < rows; r++)
                        {
                            // i ≥ iStart, so each row sees at least key j0.
                            int visible = Math.Min(width, i0 + r + d.Offset + 1 - j0);
                            ExpInPlace<TV, T>(p + (r * KeyTile), visible, d.Scale, lse[i0 + r]);
                            new Span<float>(p + (r * KeyTile) + visible, width - visible).Clear();
                        }

                        if (exact)
                        {
                            KeysOverSeeingRows<TV, T>(p, dob, d.QStride, dvTile, d.KStride, rows, first, width, hd);
                        }
                        else
                        {
                            MulAdd<TV, T>(p, 1, KeyTile, dob, d.QStride, dvTile, d.KStride, width, hd, rows, true);
                        }

                        ProductWithKeys(dob, vTile, vt, dp, rows, width);
                        for (int r = 0; r < rows; r++)
                        {
                            // Over the visible keys only: dS stays 0 at masked pairs, where dp is NaN if a masked v is.
                            SoftmaxGrad<TV, T>(p + (r * KeyTile), dp + (r * KeyTile), Math.Min(width, first + r), rowD[(hh * d.QueryLength) + i0 + r], d.Scale);
                        }

                        if (exact)
                        {
                            RowsOverVisibleKeys<TV, T>(p, kTile, d.KStride, io.Dq + row0, d.QStride, rows, first, width, hd);
                            KeysOverSeeingRows<TV, T>(p, qb, d.QStride, dkTile, d.KStride, rows, first, width, hd);
                        }
                        else
                        {
                            MulAdd<TV, T>(p, KeyTile, 1, kTile, d.KStride, io.Dq + row0, d.QStride, rows, hd, width, true);
                            MulAdd<TV, T>(p, 1, KeyTile, qb, d.QStride, dkTile, d.KStride, width, hd, rows, true);
                        }
                    }
                }
            }
        }
    }
}
