// DoRA's weight norm on the GPU (DoraNorm's math, docs/formats/methods.md#dora-norm): per output row i of V = W + s·B·A,
//   norm_i = ‖V_i,:‖₂ = sqrt(Σ_p (W_ip + Σ_q (s·B_iq)·A_qp)²)
// Shapes, row-major: W [out, in] (a DeviceWeightOperand: fp32, bf16/fp16 mirrors widened to fp32
// at upload, or a 4-bit Quant4View dequantized per element as Quant4Operand does), A [r, in], B [out, r], norms [out].
// One warp per row (8 rows per group of 256 threads, no barriers): lane t builds V_ip for
// p ≡ t (mod 32) in fp32 (the CPU's order: W first, then the q terms in order), squares it in
// double and sums; the 32 lane sums are added by a xor butterfly (a fixed order, in double), and
// the square root is rounded to fp32.
// Differs from the CPU only in the grouping of the double sum and FMA contraction of the fp32 terms.
// DoRA treats the norm as a constant in backward: no backward here. Divide (c = m / norm, and the
// magnitude gradient's Σ g⊙z / norm) is the element-wise IEEE quotient, as TensorPrimitives.Divide.
namespace PeftKernels.Kernels.Gpu;

/// <summary>Row norms ‖W + s·B·A‖₂ of DoRA's adapted weight on an ILGPU accelerator, and the element-wise quotient DoRA's scaling uses.</summary>
public static class DoraNormKernels
{
    private const int RowsPerGroup = 8;

    /// <summary>norms[i] = ‖w[i, :] + scale·(b·a)[i, :]‖₂ over a dense fp32 or a 4-bit base weight.</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="w">Base weight [outFeatures, inFeatures]: dense fp32, or 4-bit (dequantized per element as Quant4Operand does).</param>
    /// <param name="a">LoRA A [rank, inFeatures].</param>
    /// <param name="b">LoRA B [outFeatures, rank].</param>
    /// <param name="scale">LoRA scale s.</param>
    /// <param name="norms">Output [outFeatures].</param>
    /// <param name="inFeatures">Columns of w.</param>
    /// <param name="outFeatures">Rows of w.</param>
    /// <param name="rank">LoRA rank r.</param>
    /// <exception cref="ArgumentException">A view's length or w's shape differs from what the dims imply, or a dim is not positive.</exception>
    public static void RowNorms(Accelerator accelerator, in DeviceWeightOperand w, FloatView a, FloatView b, float scale, FloatView norms,
        int inFeatures, int outFeatures, int rank)
    {
        Validate(accelerator, w.Count, a, b, norms, inFeatures, outFeatures, rank);
        w.CheckShape(inFeatures, outFeatures);
        var config = new KernelConfig(GemmTiles.Ceil(outFeatures, RowsPerGroup), RowsPerGroup * GpuMath.WarpSize);
        if (w.IsQuantized)
        {
            var q = w.QuantView;
            var op = new Quant4Operand(q, GpuTables.For(accelerator).Table(q.Type), trans: false);
            GpuKernelCache.Get(accelerator, static acc => new Loaded<Quant4Operand>(acc))
                .Norms(config, op, a, b, scale, norms, inFeatures, outFeatures, rank);
        }
        else
        {
            GpuKernelCache.Get(accelerator, static acc => new Loaded<DenseOperand>(acc))
                .Norms(config, new DenseOperand(w.DenseView, inFeatures, false), a, b, scale, norms, inFeatures, outFeatures, rank);
        }
    }

    /// <summary>quotient[i] = numerator[i] / denominator[i] (IEEE fp32 division); the quotient may be the numerator.</summary>
    /// <exception cref="ArgumentException">The three views differ in length.</exception>
    public static void Divide(Accelerator accelerator, FloatView numerator, FloatView denominator, FloatView quotient)
    {
        GpuCheck.NotNull(accelerator);
        GpuCheck.FitsInt(numerator.Length, nameof(numerator));
        Check.Length(nameof(denominator), denominator.Length, numerator.Length, "numerator.Length");
        Check.Length(nameof(quotient), quotient.Length, numerator.Length, "numerator.Length");
        if (numerator.Length != 0)
        {
            GpuKernelCache.Get(accelerator, static acc => new LoadedDivide(acc)).Divide((int)numerator.Length, numerator, denominator, quotient);
        }
    }

    internal static void RowNormsKernel<TW>(TW w, FloatView a, FloatView b, float scale, FloatView norms, int inFeatures, int outFeatures, int rank)
        where TW : struct, IGemmOperand
    {
        // The row is uniform across the warp, so whole warps skip together and every shuffle has all 32 lanes.
        int i = (Grid.IdxX * RowsPerGroup) + Warp.WarpIdx;
        if (i >= outFeatures)
        {
            return;
        }

        double sum = 0;
        for (int p = Warp.LaneIdx; p < inFeatures; p += GpuMath.WarpSize)
        {
            float v = w.Load(i, p);
            for (int q = 0; q < rank; q++)
            {
                v += (scale * b[(i * rank) + q]) * a[(q * inFeatures) + p];
            }

            double d = v;
            sum += d * d;
        }

        for (int delta = GpuMath.WarpSize / 2; delta > 0; delta >>= 1)
        {
            sum += Warp.ShuffleXor(sum, delta);
        }

        if (Warp.LaneIdx == 0)
        {
            norms[i] = (float)Math.Sqrt(sum);
        }
    }

    internal static void DivideKernel(Index1D i, FloatView numerator, FloatView denominator, FloatView quotient) =>
        quotient[i] = GpuMath.DivRn(numerator[i], denominator[i]);

    private static void Validate(Accelerator accelerator, long w, FloatView a, FloatView b, FloatView norms, int inFeatures, int outFeatures, int rank)
    {
        GpuCheck.NotNull(accelerator);
        DoraNormShapes.RowNorms(w, a.Length, b.Length, norms.Length, inFeatures, outFeatures, rank);
        GpuCheck.FitsInt(w, "w");
        GpuCheck.FitsInt(a.Length, nameof(a));
    }

    private sealed class Loaded<TW>(Accelerator accelerator)
        where TW : struct, IGemmOperand
    {
        public readonly Action<KernelConfig, TW, FloatView, FloatView, float, FloatView, int, int, int> Norms =
            accelerator.LoadStreamKernel<TW, FloatView, FloatView, float, FloatView, int, int, int>(RowNormsKernel);
    }

    private sealed class LoadedDivide(Accelerator accelerator)
    {
        public readonly Action<Index1D, FloatView, FloatView, FloatView> Divide =
            accelerator.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView>(DivideKernel);
    }
}
