using PeftKernels.Kernels.Cpu;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// The direct bf16-pair packers (Bf16PairPack: fp32 and bf16 sources, transposed or not, and LoRA's
/// K-concatenations) against the generic route they replace (an fp32 pack, then Bf16Round.ToPairs in place):
/// the packed words must be equal bit for bit, including NaN, infinities, signed zeros, denormals and ties, odd
/// kc, odd block starts, edge strips narrower than nr, a concatenation split at an odd K (generic route) and at
/// an even one (each side on its own). Runs on every machine: where the native library is missing the fp32
/// transposed and plain-A sources take the generic route themselves.
/// </summary>
public unsafe class Bf16PairPackTests
{
    private const int K1 = 40;
    private const int K2 = 30;
    private const int N = 45;

    private static readonly (int P0, int Kc)[] Blocks = [(0, 1), (0, 2), (0, 33), (3, 7), (2, 32), (0, 64), (38, 2), (39, 4), (40, 30), (36, 34), (41, 29)];

    [Fact]
    public void DirectBPackersMatchTheGenericRoute()
    {
        int k = K1 + K2;
        var wt = Data(N * (k + 3), 1);       // op(B) = Wᵀ: storage [N, k + 3]
        var rows = Data(k * (N + 5), 2);     // op(B) stored [k, N + 5]
        var bt = Bf16Of(wt);
        var brows = Bf16Of(rows);
        var lora = Data(N * K2, 3);          // the LoRA part [N, K2] (transposed, as LoRA B in the forward)
        fixed (float* pwt = wt, prows = rows, plora = lora)
        fixed (ushort* pbt = bt, pbrows = brows)
        {
            foreach (var (p0, kc) in Blocks)
            {
                Check("DenseB trans", new DenseB(pwt, k + 3, true, k), p0, kc);
                Check("DenseB rows", new DenseB(prows, N + 5, false, k), p0, kc);
                Check("DenseB masked", new DenseB(prows, N + 5, false, k, new DropoutMask(0.25f, 7)), p0, kc);
                Check("Bf16B trans", new Bf16B(pbt, k + 3, true, k), p0, kc);
                Check("Bf16B rows", new Bf16B(pbrows, N + 5, false, k), p0, kc);
                foreach (int k1 in new[] { K1, K1 + 1 })
                {
                    var second = new DenseB(plora, K2, true, K2);
                    Check($"ConcatB f32 k1={k1}", new ConcatB<DenseB, DenseB>(new DenseB(pwt, k + 3, true, k1), second, k1), p0, Math.Min(kc, k1 + K2 - p0));
                    Check($"ConcatB bf16 k1={k1}", new ConcatB<Bf16B, DenseB>(new Bf16B(pbt, k + 3, true, k1), second, k1), p0, Math.Min(kc, k1 + K2 - p0));
                    Check($"ConcatB rows k1={k1}", new ConcatB<Bf16B, DenseB>(new Bf16B(pbrows, N + 5, false, k1), new DenseB(plora, N, false, K2), k1), p0, Math.Min(kc, k1 + K2 - p0));
                }
            }
        }
    }

    [Fact]
    public void DirectAPackersMatchTheGenericRoute()
    {
        int k = K1 + K2;
        var x = Data(20 * (k + 2), 4);
        var h = Data(20 * K2, 5);
        var xt = Data(k * 23, 8);           // op(A) = Aᵀ: storage [k, 23], 20 rows of op(A) used
        fixed (float* px = x, ph = h, pxt = xt)
        {
            foreach (var (p0, kc) in Blocks)
            {
                foreach (int rows in new[] { 1, 12, 20 })
                {
                    int mr = rows == 20 ? 24 : 12;
                    CheckA("DenseA", new DenseA(px, k + 2, false), rows, mr, p0, kc);
                    CheckA("DenseA trans", new DenseA(pxt, 23, true), rows, mr, p0, kc);
                    CheckA("DenseA trans scaled", new DenseA(pxt, 23, true, 0.5f), rows, mr, p0, kc);
                    foreach (int k1 in new[] { K1, K1 + 1 })
                    {
                        var concat = new ConcatA<DenseA, DenseA>(new DenseA(px, k + 2, false), new DenseA(ph, K2, false, 0.5f), k1);
                        CheckA($"ConcatA k1={k1}", concat, rows, mr, p0, Math.Min(kc, k1 + K2 - p0));
                    }
                }
            }
        }
    }

    [Fact]
    public void ConcatWithAnOddSplitStillPairsAcrossIt()
    {
        // Block [38, 42) with the split at 41: the pair (40, 41) straddles it, so the generic route must run;
        // its words hold one value from each source.
        var w = Data(32 * 41, 6);
        var b = Data(32 * 1, 7);
        var direct = new float[2 * 32];
        fixed (float* pw = w, pb = b, pd = direct)
        {
            var concat = new ConcatB<DenseB, DenseB>(new DenseB(pw, 41, true, 41), new DenseB(pb, 1, true, 1), 41);
            Bf16PairPack.PackB(concat, pd, 0, 32, 40, 2, 32, 2 * 32);
            uint word = ((uint*)pd)[5];
            Assert.Equal(Bf16Round.Bits(BitConverter.SingleToUInt32Bits(w[(5 * 41) + 40])) >> 16, word & 0xFFFF);
            Assert.Equal(Bf16Round.Bits(BitConverter.SingleToUInt32Bits(b[5])), word & 0xFFFF0000);
        }
    }

    private static void Check<TB>(string name, TB source, int p0, int kc)
        where TB : struct, IPanelB
    {
        if (kc <= 0)
        {
            return;
        }

        foreach (int nr in new[] { 16, 32 })
        {
            long stride = ((long)kc * nr) + 8;
            int strips = (N + nr - 1) / nr;
            var expected = new float[strips * stride];
            var actual = new float[strips * stride];
            fixed (float* e = expected, a = actual)
            {
                source.Pack(e, 0, N, p0, kc, nr, stride);
                for (int t = 0; t < strips; t++)
                {
                    Bf16Round.ToPairs(e + (t * stride), kc, nr);
                }

                Bf16PairPack.PackB(source, a, 0, N, p0, kc, nr, stride);
            }

            Compare($"{name} nr={nr} p0={p0} kc={kc}", expected, actual, strips, stride, (kc + 1) / 2 * nr);
        }
    }

    private static void CheckA<TA>(string name, TA source, int rows, int mr, int p0, int kc)
        where TA : struct, IPanelA
    {
        if (kc <= 0)
        {
            return;
        }

        var expected = new float[kc * mr];
        var actual = new float[kc * mr];
        fixed (float* e = expected, a = actual)
        {
            source.Pack(e, 0, rows, p0, kc, mr);
            Bf16Round.ToPairs(e, kc, mr);
            Bf16PairPack.PackA(source, a, 0, rows, p0, kc, mr);
        }

        Compare($"{name} rows={rows} mr={mr} p0={p0} kc={kc}", expected, actual, 1, 0, (kc + 1) / 2 * mr);
    }

    private static void Compare(string what, float[] expected, float[] actual, int strips, long stride, int words)
    {
        for (int t = 0; t < strips; t++)
        {
            for (int w = 0; w < words; w++)
            {
                uint want = BitConverter.SingleToUInt32Bits(expected[(t * stride) + w]);
                uint got = BitConverter.SingleToUInt32Bits(actual[(t * stride) + w]);
                Assert.True(want == got, $"{what}: strip {t} word {w} is {got:X8}, generic route {want:X8}");
            }
        }
    }

    private static float[] Data(int count, int seed)
    {
        var data = TestUtil.Random(count, seed);
        float[] specials = [float.NaN, float.PositiveInfinity, float.NegativeInfinity, -0f, 1e-40f, -3e-39f,
            BitConverter.UInt32BitsToSingle(0x3F808000), BitConverter.UInt32BitsToSingle(0x3F818000), BitConverter.UInt32BitsToSingle(0x7F7FFFFF)];
        for (int i = 0; i < specials.Length; i++)
        {
            data[((i * 131) + seed) % count] = specials[i];
        }

        return data;
    }

    private static ushort[] Bf16Of(float[] values)
    {
        var result = new ushort[values.Length];
        Bf16.FromSingle(values, result);
        return result;
    }
}
