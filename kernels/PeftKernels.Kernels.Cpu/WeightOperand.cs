// A frozen weight W [Rows = out, Cols = in], row-major, over one of the storages a base weight
// may keep: fp32, bf16 (bit patterns), IEEE fp16, or 4-bit (QuantizedWeight, NF4/FP4, see
// docs/formats/4bit-formats.md). Callers (a Linear layer, say) wrap their storage once and call
// one entry point per op and direction (LoraMatmul, Gemm, DoraNorm); the kernels switch on
// Storage (Select) to pick the widening panel or the 4-bit body. The span-based generic bodies
// below stay the layer that does the work.
namespace PeftKernels.Kernels.Cpu;

/// <summary>The storage type of a frozen weight operand.</summary>
public enum WeightFormat
{
    /// <summary>fp32 values.</summary>
    F32,

    /// <summary>bf16 bit patterns (the upper half of an fp32), widened exactly to fp32 in registers.</summary>
    BF16,

    /// <summary>IEEE fp16 values, widened exactly to fp32 while packing.</summary>
    F16,

    /// <summary>4-bit NF4/FP4 codes with per-block scales (<see cref="QuantizedWeight"/>), dequantized on the fly.</summary>
    Q4,
}

/// <summary>A frozen weight W [Rows, Cols] (a linear layer's [out, in]) over one storage type, read by the kernels without a copy.</summary>
public readonly struct WeightOperand
{
    private readonly ReadOnlyMemory<float> f32;
    private readonly ReadOnlyMemory<ushort> bf16;
    private readonly ReadOnlyMemory<Half> f16;
    private readonly QuantizedWeight? q4;

    private WeightOperand(WeightFormat storage, int rows, int cols,
        ReadOnlyMemory<float> f32 = default, ReadOnlyMemory<ushort> bf16 = default, ReadOnlyMemory<Half> f16 = default, QuantizedWeight? q4 = null,
        WeightPanelCache? panelCache = null)
    {
        PanelCache = panelCache;
        Storage = storage;
        Rows = rows;
        Cols = cols;
        this.f32 = f32;
        this.bf16 = bf16;
        this.f16 = f16;
        this.q4 = q4;
    }

    /// <summary>The storage type.</summary>
    public WeightFormat Storage { get; }

    /// <summary>Rows of W (out features).</summary>
    public int Rows { get; }

    /// <summary>Columns of W (in features).</summary>
    public int Cols { get; }

    /// <summary>
    /// The cache of this weight's packed bf16 panels (null: none), read and filled by bf16-compute GEMMs; its owner
    /// clears it whenever the weight changes (see <see cref="WeightPanelCache"/>).
    /// </summary>
    public WeightPanelCache? PanelCache { get; }

    /// <summary>Rows·Cols.</summary>
    public long Count => (long)Rows * Cols;

    /// <summary>The fp32 values (Storage F32).</summary>
    internal ReadOnlySpan<float> F32Span => f32.Span;

    /// <summary>The bf16 bit patterns (Storage BF16).</summary>
    internal ReadOnlySpan<ushort> Bf16Span => bf16.Span;

    /// <summary>The fp16 values (Storage F16).</summary>
    internal ReadOnlySpan<Half> F16Span => f16.Span;

    /// <summary>The 4-bit weight (Storage Q4).</summary>
    internal QuantizedWeight Quantized => q4 ?? throw new InvalidOperationException($"the weight operand is {Storage}, not Q4.");

    /// <summary>An fp32 weight [rows, cols] over <paramref name="w"/> (not copied).</summary>
    /// <exception cref="ArgumentException">A dim is negative, or the length of <paramref name="w"/> is not rows·cols.</exception>
    public static WeightOperand F32(ReadOnlyMemory<float> w, int rows, int cols)
    {
        CheckDims(w.Length, rows, cols, nameof(w));
        return new WeightOperand(WeightFormat.F32, rows, cols, f32: w);
    }

    /// <summary>A bf16 weight [rows, cols] given as bit patterns (not copied).</summary>
    /// <exception cref="ArgumentException">A dim is negative, or the length of <paramref name="bits"/> is not rows·cols.</exception>
    public static WeightOperand Bf16(ReadOnlyMemory<ushort> bits, int rows, int cols)
    {
        CheckDims(bits.Length, rows, cols, nameof(bits));
        return new WeightOperand(WeightFormat.BF16, rows, cols, bf16: bits);
    }

    /// <summary>An fp16 weight [rows, cols] (not copied).</summary>
    /// <exception cref="ArgumentException">A dim is negative, or the length of <paramref name="values"/> is not rows·cols.</exception>
    public static WeightOperand F16(ReadOnlyMemory<Half> values, int rows, int cols)
    {
        CheckDims(values.Length, rows, cols, nameof(values));
        return new WeightOperand(WeightFormat.F16, rows, cols, f16: values);
    }

    /// <summary>A 4-bit weight; its shape must be 2-D, [rows, cols].</summary>
    /// <exception cref="ArgumentNullException"><paramref name="w"/> is null.</exception>
    /// <exception cref="ArgumentException">The shape of <paramref name="w"/> is not 2-D.</exception>
    public static WeightOperand Quant4(QuantizedWeight w)
    {
        ArgumentNullException.ThrowIfNull(w);
        if (w.Shape.Length != 2)
        {
            throw new ArgumentException($"w has shape [{string.Join(", ", w.Shape)}]; a weight operand is 2-D [rows, cols].", nameof(w));
        }

        return new WeightOperand(WeightFormat.Q4, w.Shape[0], w.Shape[1], q4: w);
    }

    /// <summary>
    /// This operand with <paramref name="cache"/> as its panel cache: bf16-compute GEMMs keep the packed panels of this
    /// weight there and reuse them on later calls, so the caller must clear the cache whenever the weight's values change.
    /// 4-bit weights have no bf16 panels (the cache stays unused).
    /// </summary>
    public WeightOperand WithPanelCache(WeightPanelCache? cache) => new(Storage, Rows, Cols, f32, bf16, f16, q4, cache);

    /// <inheritdoc/>
    public override string ToString() => $"WeightOperand({Storage}, [{Rows}, {Cols}])";

    /// <summary>Throws unless W is [outFeatures, inFeatures] (a default operand, [0, 0], never is: the dims are positive).</summary>
    internal void CheckShape(int inFeatures, int outFeatures)
    {
        if (Rows != outFeatures || Cols != inFeatures)
        {
            throw new ArgumentException($"w has shape [{Rows}, {Cols}]; expected [{outFeatures}, {inFeatures}] ([outFeatures, inFeatures]; a {Storage} weight).", "w");
        }
    }

    private static void CheckDims(int length, int rows, int cols, string name)
    {
        Check.NonNegative(rows, "rows");
        Check.NonNegative(cols, "cols");
        Check.Length(name, length, (long)rows * cols, $"rows·cols for [{rows}, {cols}]");
    }
}
