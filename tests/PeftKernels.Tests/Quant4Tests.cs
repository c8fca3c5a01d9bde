using FsCheck;
using FsCheck.Fluent;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public class Quant4Tests
{
    private static readonly int[] Blocksizes = [32, 64, 128, 256, 512, 1024, 2048, 4096];

    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    private static float[] Table(Quant4Type type) => Quant4Codes.Table(type).ToArray();

    private static (byte[] Packed, float[] Absmax) Cpu(float[] x, Quant4Type type, int blocksize, SimdPath path = SimdPath.Auto, int threads = 1)
    {
        var packed = new byte[(x.Length + 1) / 2];
        var absmax = new float[Quant4.BlockCount(x.Length, blocksize)];
        Quant4.Quantize(x, packed, absmax, type, blocksize, new KernelOptions(threads, path));
        return (packed, absmax);
    }

    private static (byte[] Packed, float[] Absmax) Reference(float[] x, Quant4Type type, int blocksize)
    {
        var (codes, absmax) = BlockwiseQuantReference.Quantize(x, Table(type), blocksize);
        return (BlockwiseQuantReference.Pack4(codes, Table(type)), absmax);
    }

    [Fact]
    public void CodeTablesArePinned()
    {
        Assert.Equal(
            new[] { -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f, -0.18477343022823334f,
                -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f },
            Quant4Codes.Nf4.ToArray());
        float[] fp4 = [0f, 0.0625f, 8f, 12f, 4f, 6f, 2f, 3f, 0f, -0.0625f, -8f, -12f, -4f, -6f, -2f, -3f];
        Assert.Equal(fp4.Select(v => v / 12f), Quant4Codes.Fp4.ToArray());
        Assert.Equal(0, BitConverter.SingleToInt32Bits(Quant4Codes.Fp4[8])); // +0, not -0
        var dyn = Quant4Codes.Dynamic.ToArray();
        Assert.Equal(256, dyn.Length);
        Assert.True(dyn.Zip(dyn.Skip(1)).All(p => p.First < p.Second), "dynamic map must be strictly increasing");
        Assert.Equal(-0.992968738079071f, dyn[0]);
        Assert.Equal(0f, dyn[127]);
        Assert.Equal(5.500000384017767e-07f, dyn[128]);
        Assert.Equal(1f, dyn[255]);
        // The independent copy of the table in the repository (docs/formats/4bit-formats.md#dynamic-map).
        string file = Path.Combine(RepositoryRoot(), "docs", "formats", "dynamic-map.txt");
        var expected = File.ReadAllLines(file).Where(l => l.Length > 0).Select(l => float.Parse(l, System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        Assert.Equal(expected, dyn);
    }

    private static string RepositoryRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir != null && !File.Exists(Path.Combine(dir.FullName, "PeftKernels.sln")))
        {
            dir = dir.Parent;
        }

        return dir?.FullName ?? throw new DirectoryNotFoundException("repository root (PeftKernels.sln) not found above the test assembly");
    }

    [Fact]
    public void GoldenMidpointsGoToTheLowerCode()
    {
        // absmax = 1 exactly (element 0), so s = x; each midpoint must map to the lower of its two codes.
        var nf4 = Table(Quant4Type.Nf4);
        var x = new float[64];
        x[0] = 1f;
        for (int i = 0; i < 15; i++)
        {
            x[1 + i] = (nf4[i] + nf4[i + 1]) / 2f;
        }

        var (packed, absmax) = Cpu(x, Quant4Type.Nf4, 64);
        Assert.Equal(1f, absmax[0]);
        byte[] expected = new byte[32];
        expected[0] = (15 << 4) | 0; // 1.0 → 15, mid(−1, −0.696) → 0
        for (int i = 1; i < 15; i += 2)
        {
            expected[(i + 1) / 2] = (byte)((i << 4) | (i + 1)); // x[i+1] = mid(i, i+1) → i, x[i+2] = mid(i+1, i+2) → i+1
        }

        for (int b = 8; b < 32; b++)
        {
            expected[b] = 0x77; // zeros → code 7 (0.0)
        }

        Assert.Equal(expected, packed);
    }

    [Fact]
    public void GoldenZeroBlocksAbsmaxAndSigns()
    {
        // Full all-zero block stores absmax 0; the partial last all-zero block stores 1e-38 (fp32 9.99999935e-39).
        var x = new float[64 + 33];
        x[64 + 0] = 0f;
        var (packed, absmax) = Cpu(x, Quant4Type.Nf4, 64);
        Assert.Equal(0f, absmax[0]);
        Assert.Equal(9.99999935e-39f, absmax[1]);
        Assert.All(packed, b => Assert.Equal(0x77, b)); // includes the odd-length pad nibble

        // ±absmax → codes 15 / 0; −0 → code 7; FP4: exact zero → code 0, ±absmax → codes 3 / 11.
        float[] signs = [2.5f, -2.5f, -0f, 0f, 1.25f, -1.25f];
        var (nf4, nf4Absmax) = Cpu(signs, Quant4Type.Nf4, 32);
        Assert.Equal(2.5f, nf4Absmax[0]);
        Assert.Equal(new byte[] { 0xF0, 0x77, 0xC2 }, nf4); // 0.5 → 12 (0.4407), −0.5 → 2 (−0.525)
        var (fp4, _) = Cpu(signs, Quant4Type.Fp4, 32);
        Assert.Equal(new byte[] { 0x3B, 0x00, 0x5D }, fp4); // FP4 0.5 → code 5 (6/12), −0.5 → code 13
    }

    [Fact]
    public void OddLengthPadsWithTheZeroCode()
    {
        var (nf4, _) = Cpu([1f, -1f, 1f], Quant4Type.Nf4, 32);
        Assert.Equal(new byte[] { 0xF0, 0xF7 }, nf4);
        var (fp4, _) = Cpu([1f, -1f, 1f], Quant4Type.Fp4, 32);
        Assert.Equal(new byte[] { 0x3B, 0x30 }, fp4);
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void QuantizeMatchesReferenceByteForByte(SimdPath path, int threads)
    {
        foreach (int blocksize in Blocksizes)
        {
            foreach (int n in new[] { 1, 2, 31, 33, blocksize - 1, blocksize, blocksize + 1, (3 * blocksize) + 17, 5000 })
            {
                foreach (var type in new[] { Quant4Type.Nf4, Quant4Type.Fp4 })
                {
                    var x = TestUtil.Random(n, n + blocksize, range: 3f);
                    var (packed, absmax) = Cpu(x, type, blocksize, path, threads);
                    var (refPacked, refAbsmax) = Reference(x, type, blocksize);
                    Assert.True(refPacked.AsSpan().SequenceEqual(packed), $"{type} bs={blocksize} n={n} {path} t{threads}: packed bytes differ");
                    Assert.Equal(refAbsmax, absmax);
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void DequantizeMatchesReferenceBitForBit(SimdPath path, int threads)
    {
        foreach (int blocksize in new[] { 32, 64, 256, 4096 })
        {
            foreach (int n in new[] { 1, 3, 17, 64, 65, 1000, 9001 })
            {
                foreach (var type in new[] { Quant4Type.Nf4, Quant4Type.Fp4 })
                {
                    var x = TestUtil.Random(n, n, range: 2f);
                    var (packed, absmax) = Reference(x, type, blocksize);
                    var expected = BlockwiseQuantReference.Dequantize4(packed, absmax, Table(type), blocksize, n);
                    var actual = new float[n];
                    Quant4.Dequantize(packed, absmax, type, blocksize, actual, new KernelOptions(threads, path));
                    Assert.Equal(expected, actual);
                    var bf16 = new ushort[n];
                    Quant4.Dequantize(packed, absmax, type, blocksize, bf16, new KernelOptions(threads, path));
                    Assert.Equal(expected.Select(Bf16Reference.FromSingle), bf16);
                    var f16 = new Half[n];
                    Quant4.Dequantize(packed, absmax, type, blocksize, f16, new KernelOptions(threads, path));
                    Assert.Equal(expected.Select(v => (Half)v), f16);
                }
            }
        }
    }

    [Fact]
    public void Bf16AndF16InputsQuantizeLikeTheirFp32Widening()
    {
        var x = TestUtil.Random(777, 5, range: 4f);
        var bf16 = x.Select(Bf16Reference.FromSingle).ToArray();
        var f16 = x.Select(v => (Half)v).ToArray();
        foreach (var type in new[] { Quant4Type.Nf4, Quant4Type.Fp4 })
        {
            var packed = new byte[389];
            var absmax = new float[13];
            Quant4.Quantize(bf16, packed, absmax, type, 64);
            var (refPacked, refAbsmax) = Reference(TestUtil.Widen(bf16), type, 64);
            Assert.Equal(refPacked, packed);
            Assert.Equal(refAbsmax, absmax);
            Quant4.Quantize(f16, packed, absmax, type, 64);
            (refPacked, refAbsmax) = Reference(f16.Select(h => (float)h).ToArray(), type, 64);
            Assert.Equal(refPacked, packed);
            Assert.Equal(refAbsmax, absmax);
        }
    }

    [Fact]
    public void PropertyErrorBoundAndMonotoneCodes()
    {
        var gen =
            from n in Gen.Choose(1, 3000)
            from bsIndex in Gen.Choose(0, Blocksizes.Length - 1)
            from typeIndex in Gen.Choose(0, 1)
            from seed in Gen.Choose(0, 100000)
            select (n, bs: Blocksizes[bsIndex], type: (Quant4Type)typeIndex, seed);
        Prop.ForAll(gen.ToArbitrary(), t =>
        {
            var table = Table(t.type);
            var sorted = table.Order().ToArray();
            double maxGap = sorted.Zip(sorted.Skip(1)).Max(p => p.Second - p.First);
            var x = TestUtil.Random(t.n, t.seed, range: 10f);
            var (packed, absmax) = Cpu(x, t.type, t.bs);
            var back = new float[t.n];
            Quant4.Dequantize(packed, absmax, t.type, t.bs, back);
            for (int i = 0; i < t.n; i++)
            {
                double bound = (maxGap / 2 * absmax[i / t.bs]) + (1e-6 * absmax[i / t.bs]);
                Assert.True(Math.Abs(back[i] - x[i]) <= bound, $"element {i}: {x[i]} → {back[i]}, bound {bound}");
            }

            // Within a block the code value is monotone in the input.
            for (int b = 0; b * t.bs < t.n; b++)
            {
                var idx = Enumerable.Range(b * t.bs, Math.Min(t.bs, t.n - (b * t.bs))).OrderBy(i => x[i]).ToArray();
                for (int q = 1; q < idx.Length; q++)
                {
                    Assert.True(back[idx[q]] >= back[idx[q - 1]], $"block {b}: not monotone at {x[idx[q]]}");
                }
            }
        }).Check(TestUtil.Seeded(60, 3));
    }

    [Fact]
    public void NestedQuantizationMatchesReferenceAndBoundsTheError()
    {
        foreach (int blocks in new[] { 1, 2, 255, 256, 257, 1000 })
        {
            var absmax = TestUtil.Random(blocks, blocks).Select(v => Math.Abs(v) + 0.01f).ToArray();
            var codes = new byte[blocks];
            var nested = new float[Quant4.BlockCount(blocks, 256)];
            float offset = Quant4.QuantizeNested(absmax, codes, nested);
            var (refCodes, refNested, refOffset) = BlockwiseQuantReference.QuantizeNested(absmax, Quant4Codes.Dynamic.ToArray());
            Assert.Equal(refOffset, offset);
            Assert.Equal(refCodes, codes);
            Assert.Equal(refNested, nested);

            var back = new float[blocks];
            Quant4.DequantizeNested(codes, nested, offset, back);
            Assert.Equal(BlockwiseQuantReference.DequantizeNested(codes, nested, offset, Quant4Codes.Dynamic.ToArray()), back);
            var dyn = Quant4Codes.Dynamic.ToArray();
            double maxGap = dyn.Zip(dyn.Skip(1)).Max(p => p.Second - p.First);
            for (int i = 0; i < blocks; i++)
            {
                double bound = (maxGap / 2 * nested[i / 256]) + 1e-6;
                Assert.True(Math.Abs(back[i] - absmax[i]) <= bound, $"absmax {i}: {absmax[i]} → {back[i]}, bound {bound}");
            }
        }
    }

    [Fact]
    public void QuantizedWeightRoundTripsWithAndWithoutDoubleQuant()
    {
        var x = TestUtil.Random(40 * 70, 9);
        foreach (bool dq in new[] { false, true })
        {
            var w = QuantizedWeight.Quantize(x, [40, 70], Quant4Type.Nf4, 64, dq);
            Assert.Equal(dq, w.IsNested);
            var (packed, absmax) = Reference(x, Quant4Type.Nf4, 64);
            Assert.Equal(packed, w.Packed);
            var back = w.Dequantize();
            var expectedAbsmax = dq ? BlockwiseQuantReference.DequantizeNested(w.NestedCodes, w.NestedAbsmax, w.NestedOffset, Quant4Codes.Dynamic.ToArray()) : absmax;
            Assert.Equal(BlockwiseQuantReference.Dequantize4(packed, expectedAbsmax, Table(Quant4Type.Nf4), 64, x.Length), back);
            Assert.True(w.ByteSize < x.Length * 4 / 7, "4-bit storage must be under a seventh of fp32");
        }
    }

    [Fact]
    public void BadInputsThrowClearErrors()
    {
        var x = new float[100];
        var ex = Assert.Throws<ArgumentException>(() => Quant4.Quantize(x, new byte[50], new float[2], Quant4Type.Nf4, 48));
        Assert.Equal("blocksize", ex.ParamName);
        Assert.Contains("48", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => Quant4.Quantize(x, new byte[50], new float[3], Quant4Type.Nf4, 64));
        Assert.Equal("absmax", ex.ParamName);
        Assert.Contains("expected 2", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => Quant4.Dequantize(new byte[49], new float[2], Quant4Type.Nf4, 64, x));
        Assert.Equal("packed", ex.ParamName);
        ex = Assert.Throws<ArgumentException>(() => new QuantizedWeight(new byte[50], new float[1], null, null, 0, 64, Quant4Type.Nf4, [10, 10], "float32"));
        Assert.Equal("absmax", ex.ParamName);
        ex = Assert.Throws<ArgumentException>(() => new QuantizedWeight(new byte[50], null, new byte[2], null, 0, 64, Quant4Type.Nf4, [10, 10], "float32"));
        Assert.Contains("nested", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => QuantizedWeight.Quantize(x, [10, 11]));
        Assert.Contains("[10, 11]", ex.Message);
    }
}
