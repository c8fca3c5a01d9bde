// A LoRA's two backward products that read the output gradient, in one pass over it (row-major):
//   g [m, out], h [m, r] (the forward's drop(x)·Aᵀ), B [out, r], scale s:
//   dB [out, r] = s · gᵀ · h        dB[o, :] = Σ_i g[i, o] · (s·h[i, :])
//   dh [m, r]   = s · g · B         dh[i, :] = s · Σ_o g[i, o] · B[o, :]
// Why: as two GEMMs each product streams g on its own (at MixLoRA's gate/up shape a segment's g is
// 64 × 2048 floats, the whole module's 4 MiB, read twice from memory) and packs it for a K of 64 or
// an N of 16. Here each element of g is loaded once and feeds both: one broadcast, one FMA into dh's
// row (kept in registers for a block of 4 rows) and one into dB's row (B and dB stay in L2).
// r runs in vector chunks (16 or 8 lanes; the rest one lane at a time), rows in blocks of 4 (the rest
// one at a time). Single-threaded: SegmentedLoraTraining splits its segments over the threads. The sums
// run over o in order for dh and over i in order for dB (deterministic, not the GEMM's bits).
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

/// <summary>dB = s·gᵀ·h and dh = s·g·B in one pass over g, on the CPU (one thread).</summary>
public static unsafe partial class LowRankGrads
{
    /// <summary>dB = s·gᵀ·h [out, r] and dh = s·g·B [m, r], both overwritten.</summary>
    /// <param name="g">Output gradient [m, out].</param>
    /// <param name="h">The forward's h [m, r].</param>
    /// <param name="b">B [out, r].</param>
    /// <param name="scale">s.</param>
    /// <param name="db">Output dB [out, r].</param>
    /// <param name="dh">Output dh [m, r].</param>
    /// <param name="m">Rows.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="rank">r.</param>
    /// <param name="path">SIMD path (Auto: the best this CPU has).</param>
    /// <exception cref="ArgumentException">A dim is out of range or a span's length differs from what the dims imply.</exception>
    public static void Compute(ReadOnlySpan<float> g, ReadOnlySpan<float> h, ReadOnlySpan<float> b, float scale, Span<float> db, Span<float> dh,
        int m, int outFeatures, int rank, SimdPath path = SimdPath.Auto)
    {
        CheckShapes(g.Length, h.Length, b.Length, db.Length, dh.Length, m, outFeatures, rank);
        db.Clear();
        var resolved = new KernelOptions(1, path).ResolvePath();
        fixed (float* pg = g, ph = h, pb = b, pdb = db, pdh = dh)
        {
            Chunk(pg, outFeatures, ph, pb, pdb, pdh, scale, m, outFeatures, rank, resolved);
        }
    }

    /// <summary>Columns [c0, c0 + whole vectors) of dB (accumulated into) and dh (overwritten), over the outF columns of g
    /// whose rows are <paramref name="ldg"/> apart; returns the first column not done.</summary>
    private static int Columns<TV, T>(float* g, long ldg, float* h, float* b, float* db, float* dh, float scale, int m, int outF, int r, int c0)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, c = c0;
        TV s = T.Splat(scale);
        for (; c + w <= r; c += w)
        {
            int i = 0;
            for (; i + 4 <= m; i += 4)
            {
                float* g0 = g + (i * ldg), g1 = g0 + ldg, g2 = g1 + ldg, g3 = g2 + ldg;
                TV h0 = T.Mul(s, T.Load(h + ((long)i * r) + c)), h1 = T.Mul(s, T.Load(h + ((long)(i + 1) * r) + c));
                TV h2 = T.Mul(s, T.Load(h + ((long)(i + 2) * r) + c)), h3 = T.Mul(s, T.Load(h + ((long)(i + 3) * r) + c));
                TV a0 = T.Splat(0f), a1 = a0, a2 = a0, a3 = a0;
                float* bp = b + c, dbp = db + c;
                for (int o = 0; o < outF; o++, bp += r, dbp += r)
                {
                    TV bv = T.Load(bp);
                    TV x0 = T.Splat(g0[o]), x1 = T.Splat(g1[o]), x2 = T.Splat(g2[o]), x3 = T.Splat(g3[o]);
                    a0 = T.Fma(x0, bv, a0);
                    a1 = T.Fma(x1, bv, a1);
                    a2 = T.Fma(x2, bv, a2);
                    a3 = T.Fma(x3, bv, a3);
                    TV d = T.Fma(x0, h0, T.Load(dbp));
                    d = T.Fma(x1, h1, d);
                    d = T.Fma(x2, h2, d);
                    T.Store(dbp, T.Fma(x3, h3, d));
                }

                T.Store(dh + ((long)i * r) + c, T.Mul(s, a0));
                T.Store(dh + ((long)(i + 1) * r) + c, T.Mul(s, a1));
                T.Store(dh + ((long)(i + 2) * r) + c, T.Mul(s, a2));
                T.Store(dh + ((long)(i + 3) * r) + c, T.Mul(s, a3));
            }

            for (; i < m; i++)
            {
                float* gi = g + (i * ldg);
                TV hi = T.Mul(s, T.Load(h + ((long)i * r) + c));
                TV acc = T.Splat(0f);
                float* bp = b + c, dbp = db + c;
                for (int o = 0; o < outF; o++, bp += r, dbp += r)
                {
                    TV x = T.Splat(gi[o]);
                    acc = T.Fma(x, T.Load(bp), acc);
                    T.Store(dbp, T.Fma(x, hi, T.Load(dbp)));
                }

                T.Store(dh + ((long)i * r) + c, T.Mul(s, acc));
            }
        }

        return c;
    }
}
