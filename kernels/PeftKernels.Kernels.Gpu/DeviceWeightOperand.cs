// A frozen weight W [Rows = out, Cols = in] on a device, the device twin of WeightOperand: either
// dense fp32 (fp32 weights as they are; bf16 and fp16 weights widened to fp32 when uploaded) or a
// 4-bit Quant4View (NF4/FP4 codes, double-quantized scales decoded at upload; see
// docs/formats/4bit-formats.md). Callers wrap their device storage once and call one launcher per
// op and direction (LoraMatmulKernels, GemmKernels, DoraNormKernels); the launchers pick the
// dense or the 4-bit body from IsQuantized.
namespace PeftKernels.Kernels.Gpu;

/// <summary>A frozen weight W [Rows, Cols] (a linear layer's [out, in]) on an accelerator: dense fp32 or 4-bit.</summary>
public readonly struct DeviceWeightOperand
{
    private readonly FloatView dense;
    private readonly Quant4View quant;

    private DeviceWeightOperand(FloatView dense, Quant4View quant, bool isQuantized, int rows, int cols)
    {
        this.dense = dense;
        this.quant = quant;
        IsQuantized = isQuantized;
        Rows = rows;
        Cols = cols;
    }

    /// <summary>True for a 4-bit weight (<see cref="Quant4View"/>), false for dense fp32.</summary>
    public bool IsQuantized { get; }

    /// <summary>Rows of W (out features).</summary>
    public int Rows { get; }

    /// <summary>Columns of W (in features).</summary>
    public int Cols { get; }

    /// <summary>Rows·Cols.</summary>
    public long Count => (long)Rows * Cols;

    /// <summary>The dense fp32 view (IsQuantized false).</summary>
    internal FloatView DenseView => IsQuantized ? throw new InvalidOperationException("the device weight operand is 4-bit, not dense.") : dense;

    /// <summary>The 4-bit view (IsQuantized true).</summary>
    internal Quant4View QuantView => IsQuantized ? quant : throw new InvalidOperationException("the device weight operand is dense, not 4-bit.");

    /// <summary>A dense fp32 weight [rows, cols] over <paramref name="w"/> (not copied).</summary>
    /// <exception cref="ArgumentException">A dim is negative, or the length of <paramref name="w"/> is not rows·cols.</exception>
    public static DeviceWeightOperand Dense(FloatView w, int rows, int cols)
    {
        Check.NonNegative(rows, nameof(rows));
        Check.NonNegative(cols, nameof(cols));
        Check.Length(nameof(w), w.Length, (long)rows * cols, $"rows·cols for [{rows}, {cols}]");
        return new DeviceWeightOperand(w, default, false, rows, cols);
    }

    /// <summary>A 4-bit weight; its shape is the view's [Rows, Cols].</summary>
    public static DeviceWeightOperand Quant4(in Quant4View w) => new(default, w, true, w.Rows, w.Cols);

    /// <inheritdoc/>
    public override string ToString() => $"DeviceWeightOperand({(IsQuantized ? "Q4" : "F32")}, [{Rows}, {Cols}])";

    /// <summary>Throws unless W is [outFeatures, inFeatures].</summary>
    internal void CheckShape(int inFeatures, int outFeatures)
    {
        if (Rows != outFeatures || Cols != inFeatures)
        {
            throw new ArgumentException(
                $"w has shape [{Rows}, {Cols}]; expected [{outFeatures}, {inFeatures}] ([outFeatures, inFeatures]; a {(IsQuantized ? "4-bit" : "dense fp32")} weight).", "w");
        }
    }
}
