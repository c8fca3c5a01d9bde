// The native AVX512-VNNI rows of the integer 4-bit GEMV (native/q4_int8_kernels.c through
// Quant4Int8Native) against the managed Vector512 rows (forced with Int8Kernel.Managed) and
// Quant4Int8GemvReference: bit for bit, for NF4 and FP4, blocksizes 32..256, weight row counts not a
// multiple of the kernel's 4, in = 32 and 64·k + 32 (the odd last chunk), 1..4 activation rows, a
// zero chunk and a zero weight row, 1 and 2 threads, Rows over odd column ranges, and the engine's
// integer decode (EngineOptions.Int8Kernel) giving the same tokens either way. Skipped, with
// the reason, where the library is not built or the processor lacks AVX512-VNNI/VBMI.
using PeftKernels.Engine;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Native;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public class Quant4Int8NativeTests
{
    private static readonly (int N, int In, int Out)[] Shapes =
        [(1, 32, 1), (1, 32, 7), (1, 96, 67), (2, 160, 130), (3, 64, 5), (4, 224, 33), (1, 800, 9), (2, 768, 6), (1, 2048, 3)];

    public static TheoryData<Quant4Type, int> TypesAndBlocksizes()
    {
        var data = new TheoryData<Quant4Type, int>();
        foreach (var type in new[] { Quant4Type.Nf4, Quant4Type.Fp4 })
        {
            foreach (int blocksize in new[] { 32, 64, 128, 256 })
            {
                data.Add(type, blocksize);
            }
        }

        return data;
    }

    private static (float[] X, QuantizedWeight W, float[] Bias) Case(Quant4Type type, int blocksize, int n, int inF, int outF, int seed)
    {
        var x = TestUtil.Random(n * inF, seed, 2f);
        if (inF >= 64)
        {
            Array.Clear(x, 32, 32); // an all-zero activation chunk: scale 0
        }

        var wf = TestUtil.Random(outF * inF, seed + 1);
        for (int i = 0; i < wf.Length; i++)
        {
            wf[i] *= 1f + (i / 97 % 5); // blocks of different absmax
        }

        if (outF > 2)
        {
            Array.Clear(wf, inF, inF); // an all-zero weight row: absmax 0
        }

        var bias = seed % 2 == 0 ? TestUtil.Random(outF, seed + 2) : [];
        return (x, QuantizedWeight.Quantize(wf, [outF, inF], type, blocksize, seed % 3 == 0), bias);
    }

    private static float[] Forward(float[] x, QuantizedWeight w, float[] bias, int n, int inF, int outF, int threads, Int8Kernel kernel)
    {
        var y = Enumerable.Repeat(float.NaN, n * outF).ToArray();
        Quant4Int8Gemv.Forward(x, w, bias, y, n, inF, outF, new KernelOptions(threads, SimdPath.Vector512) { Int8Kernel = kernel });
        return y;
    }

    private static void SameBits(float[] expected, float[] actual, string what)
    {
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(actual[i]),
                $"{what}: y[{i}] = {actual[i]:R}, expected {expected[i]:R}");
        }
    }

    [Fact]
    public void NativeRowsAreAvailableWhereTheProcessorAndTheLibraryHaveThem()
    {
        bool expected = NativeQ4Int8.HasAvx512Vnni && Environment.GetEnvironmentVariable("PEFT_NATIVE") != "0"
            && File.Exists(Path.Combine(AppContext.BaseDirectory, PeftNative.LibraryName));
        Assert.True(expected == NativeQ4Int8.Available, NativeQ4Int8.Status);
        Assert.Equal(NativeQ4Int8.Available && KernelOptions.IsSupported(SimdPath.Vector512), Quant4Int8Native.Use(Int8Kernel.Auto, SimdPath.Vector512));
        Assert.False(Quant4Int8Native.Use(Int8Kernel.Auto, SimdPath.Vector256));
        Assert.False(Quant4Int8Native.Use(Int8Kernel.Managed, SimdPath.Vector512));
        if (!NativeQ4Int8.Available)
        {
            var e = Assert.Throws<NotSupportedException>(() => Quant4Int8Native.Use(Int8Kernel.Avx512Vnni, SimdPath.Vector512));
            Assert.Contains(NativeQ4Int8.Status, e.Message);
        }
    }

    [Avx512VnniTheory]
    [MemberData(nameof(TypesAndBlocksizes))]
    public void NativeEqualsManagedAndReferenceBitForBit(Quant4Type type, int blocksize)
    {
        int seed = (int)type * 100 + blocksize;
        foreach (var (n, inF, outF) in Shapes)
        {
            seed += 3;
            var (x, w, bias) = Case(type, blocksize, n, inF, outF, seed);
            var reference = Quant4Int8GemvReference.Forward(x, w.Packed, w.AbsmaxFp32(), Quant4Codes.Table(type), blocksize, n, inF, outF);
            for (int i = 0; bias.Length > 0 && i < reference.Length; i++)
            {
                reference[i] += bias[i % outF];
            }

            string what = $"{type} bs {blocksize} n {n} in {inF} out {outF}";
            var managed = Forward(x, w, bias, n, inF, outF, 1, Int8Kernel.Managed);
            SameBits(reference, managed, what + " managed");
            foreach (int threads in new[] { 1, 2 })
            {
                SameBits(reference, Forward(x, w, bias, n, inF, outF, threads, Int8Kernel.Avx512Vnni), $"{what} native t{threads}");
            }
        }
    }

    [Avx512VnniTheory]
    [MemberData(nameof(TypesAndBlocksizes))]
    public void NativeRowsRebuildDoubleQuantizedAbsmaxBitForBit(Quant4Type type, int blocksize)
    {
        // The native rows read a double-quantized weight's 8-bit absmax codes, not AbsmaxFp32(): the same y as the
        // managed rows and the reference over the fp32 absmax, and as the native rows over a plain-absmax copy of the
        // weight; shapes of more than 256 blocks (the nested scale changes every 256) and 1 and 2 threads.
        int seed = 500 + ((int)type * 100) + blocksize;
        foreach (var (n, inF, outF) in Shapes.Append((1, 768, 300)).Append((2, 2048, 41)))
        {
            seed += 7;
            var (x, plain, bias) = Case(type, blocksize, n, inF, outF, seed);
            var wf = plain.Dequantize();
            var w = QuantizedWeight.Quantize(wf, [outF, inF], type, blocksize, doubleQuant: true);
            Assert.True(w.IsNested);
            var flat = new QuantizedWeight(w.Packed, (float[])w.AbsmaxFp32().Clone(), null, null, 0f, blocksize, type, [outF, inF], "float32");
            var reference = Quant4Int8GemvReference.Forward(x, w.Packed, w.AbsmaxFp32(), Quant4Codes.Table(type), blocksize, n, inF, outF);
            for (int i = 0; bias.Length > 0 && i < reference.Length; i++)
            {
                reference[i] += bias[i % outF];
            }

            string what = $"nested {type} bs {blocksize} n {n} in {inF} out {outF}";
            SameBits(reference, Forward(x, w, bias, n, inF, outF, 1, Int8Kernel.Managed), what + " managed");
            foreach (int threads in new[] { 1, 2 })
            {
                SameBits(reference, Forward(x, w, bias, n, inF, outF, threads, Int8Kernel.Avx512Vnni), $"{what} native t{threads}");
                SameBits(reference, Forward(x, flat, bias, n, inF, outF, threads, Int8Kernel.Avx512Vnni), $"{what} native plain absmax t{threads}");
            }
        }
    }

    [Avx512VnniFact]
    public void NativeRowsOverOddRangesEqualManaged()
    {
        const SimdPath path = SimdPath.Vector512;
        int seed = 71;
        foreach (var type in new[] { Quant4Type.Nf4, Quant4Type.Fp4 })
        {
            foreach (var (m, inF, outF) in new[] { (1, 96, 67), (4, 224, 33), (3, 800, 11) })
            {
                seed += 5;
                var (x, w, _) = Case(type, 64, m, inF, outF, seed);
                var qx = new sbyte[m * inF];
                var scales = new float[Quant4Int8Gemv.ScaleLength(m, inF, path)];
                Quant4Int8Gemv.QuantizeActivations(x, m, inF, qx, scales, path);
                var managed = Enumerable.Repeat(float.NaN, m * outF).ToArray();
                var native = Enumerable.Repeat(float.NaN, m * outF).ToArray();
                int a = 1, b = outF - 2;
                Quant4Int8Gemv.Rows(qx, scales, w, managed, m, inF, outF, a, b, path, Int8Kernel.Managed);
                Quant4Int8Gemv.Rows(qx, scales, w, native, m, inF, outF, a, b, path, Int8Kernel.Avx512Vnni);
                for (int i = 0; i < native.Length; i++)
                {
                    int j = i % outF;
                    Assert.True(j >= a && j < b ? BitConverter.SingleToInt32Bits(native[i]) == BitConverter.SingleToInt32Bits(managed[i]) : float.IsNaN(native[i]),
                        $"{type} [{m}, {inF}->{outF}] range [{a},{b}) y[{i}] = {native[i]:R}, managed {managed[i]:R}");
                }
            }
        }
    }

    [Avx512VnniFact]
    public void EngineIntegerDecodeGivesTheSameTokensNativeOrManaged()
    {
        // Tiny NF4 Llama (hidden 64: q/k/v/o and gate/up run the integer rows), greedy, a LoRA adapter on top.
        using var fx = new EngineFixture(quantized: true);
        int[] Generate(Int8Kernel kernel)
        {
            using var engine = fx.Engine(new EngineOptions { Threads = 1, IntegerDecode = true, Int8Kernel = kernel, MaxSequenceLength = 64 });
            return engine.Run([new EngineRequest([1, 2, 3, 4, 5], "r8", new SamplingParams(MaxTokens: 24))])[0].Tokens;
        }

        Assert.Equal(Generate(Int8Kernel.Managed), Generate(Int8Kernel.Avx512Vnni));
    }

    [Fact]
    public void NamedNativeKernelOffTheVector512PathIsRefused()
    {
        var w = QuantizedWeight.Quantize(TestUtil.Random(64 * 4, 1), [4, 64]);
        var y = new float[4];
        var options = new KernelOptions(1, SimdPath.Vector256) { Int8Kernel = Int8Kernel.Avx512Vnni };
        var e = Assert.Throws<NotSupportedException>(() => Quant4Int8Gemv.Forward(TestUtil.Random(64, 2), w, [], y, 1, 64, 4, options));
        Assert.Contains(NativeQ4Int8.Available ? "Vector512" : NativeQ4Int8.Status, e.Message);
    }
}

/// <summary>A fact that needs the native AVX512-VNNI rows: skipped, with the reason, where they cannot run.</summary>
public sealed class Avx512VnniFactAttribute : FactAttribute
{
    public Avx512VnniFactAttribute()
    {
        if (!NativeQ4Int8.Available || !KernelOptions.IsSupported(SimdPath.Vector512))
        {
            Skip = "native AVX512-VNNI integer GEMV rows unavailable: " + NativeQ4Int8.Status;
        }
    }
}

/// <summary>A theory that needs the native AVX512-VNNI rows: skipped, with the reason, where they cannot run.</summary>
public sealed class Avx512VnniTheoryAttribute : TheoryAttribute
{
    public Avx512VnniTheoryAttribute()
    {
        if (!NativeQ4Int8.Available || !KernelOptions.IsSupported(SimdPath.Vector512))
        {
            Skip = "native AVX512-VNNI integer GEMV rows unavailable: " + NativeQ4Int8.Status;
        }
    }
}
