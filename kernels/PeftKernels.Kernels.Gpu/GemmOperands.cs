// The operands and the epilogue of the GPU GEMM core (GemmTiles). An operand is a logical
// matrix read element by element, Load(r, c); A is read as op(A) [m, k] and B as op(B) [k, n].
// Composing operands gives the fused LoRA / QLoRA GEMMs of the CPU kernels without copies:
//   DenseOperand        X or Xᵀ, times a scale, with the seeded dropout mask of the storage index
//   ConcatColumns<L,R>  [L | R]  (A = [x | s·h], K = in + r)
//   ConcatRows<L,R>     [L ; R]  (B = [wᵀ ; bᵀ] or [w ; a], K split the same way)
//   Quant4Operand       dequant(Wq) or its transpose, Wq [rows, cols] 4-bit packed (bitsandbytes)
// The epilogue writes C[i, j] = drop(alpha·acc) + beta·C[i, j] + bias[j] (beta = 0: C is not read).
using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Gpu;

/// <summary>A logical matrix read element by element inside a GEMM kernel.</summary>
internal interface IGemmOperand
{
    /// <summary>Element (r, c); only called with r, c inside the logical shape.</summary>
    float Load(int r, int c);

    /// <summary>True when Load(r, c) and Load(r, c + 1) are adjacent in memory (picks the coalesced tile-load order).</summary>
    bool ColumnsContiguous();
}

/// <summary>X (stored [rows, ld]) or Xᵀ, scaled, with the dropout mask of the storage index applied.</summary>
internal struct DenseOperand : IGemmOperand
{
    public FloatView Data;
    public int Ld;
    public int Trans; // 0 or 1: kernel parameters must be blittable, so no bool fields
    public float Scale;
    public GpuDropout Mask;

    public DenseOperand(FloatView data, int ld, bool trans, float scale = 1f, GpuDropout mask = default)
    {
        Data = data;
        Ld = ld;
        Trans = trans ? 1 : 0;
        Scale = scale;
        Mask = mask;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly float Load(int r, int c)
    {
        int at = Trans != 0 ? (c * Ld) + r : (r * Ld) + c;
        return Mask.Apply(Data[at], at) * Scale;
    }

    public readonly bool ColumnsContiguous() => Trans == 0;
}

/// <summary>[L | R]: columns 0..split−1 from L, the rest from R (shifted).</summary>
internal struct ConcatColumns<TL, TR> : IGemmOperand
    where TL : struct, IGemmOperand
    where TR : struct, IGemmOperand
{
    public TL Left;
    public TR Right;
    public int Split;

    public ConcatColumns(TL left, TR right, int split)
    {
        Left = left;
        Right = right;
        Split = split;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly float Load(int r, int c) => c < Split ? Left.Load(r, c) : Right.Load(r, c - Split);

    public readonly bool ColumnsContiguous() => Left.ColumnsContiguous();
}

/// <summary>[L ; R]: rows 0..split−1 from L (the K of a B operand), the rest from R (shifted).</summary>
internal struct ConcatRows<TL, TR> : IGemmOperand
    where TL : struct, IGemmOperand
    where TR : struct, IGemmOperand
{
    public TL Top;
    public TR Bottom;
    public int Split;

    public ConcatRows(TL top, TR bottom, int split)
    {
        Top = top;
        Bottom = bottom;
        Split = split;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly float Load(int r, int c) => r < Split ? Top.Load(r, c) : Bottom.Load(r - Split, c);

    public readonly bool ColumnsContiguous() => Top.ColumnsContiguous();
}

/// <summary>
/// dequant(Wq) [rows, cols] (or its transpose): element e = row·cols + col has code nibble e
/// (high nibble first) and value table[code]·absmax[e / blocksize], one fp32 product as the reference.
/// </summary>
internal struct Quant4Operand : IGemmOperand
{
    public ByteView Packed;
    public FloatView Absmax;
    public FloatView Table;
    public int Cols;
    public int BlockShift;
    public int Trans;

    public Quant4Operand(in Quant4View w, FloatView table, bool trans)
    {
        Packed = w.Packed;
        Absmax = w.Absmax;
        Table = table;
        Cols = w.Cols;
        BlockShift = w.BlockShift;
        Trans = trans ? 1 : 0;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly float Load(int r, int c)
    {
        int e = Trans != 0 ? (c * Cols) + r : (r * Cols) + c;
        int packed = Packed[e >> 1];
        int code = (e & 1) == 0 ? packed >> 4 : packed & 0xF;
        return Table[code] * Absmax[e >> BlockShift];
    }

    public readonly bool ColumnsContiguous() => Trans == 0;
}

/// <summary>C[i, j] = drop(alpha·acc) + beta·C[i, j] + bias[j]; the mask (if active) uses the index i·ldc + j.</summary>
internal struct GemmEpilogue
{
    public FloatView C;
    public int Ldc;
    public float Alpha;
    public float Beta;
    public FloatView Bias;
    public int HasBias;
    public GpuDropout Mask;

    public GemmEpilogue(FloatView c, int ldc, float alpha, float beta, FloatView bias = default, GpuDropout mask = default)
    {
        C = c;
        Ldc = ldc;
        Alpha = alpha;
        Beta = beta;
        Bias = bias;
        HasBias = bias.Length != 0 ? 1 : 0;
        Mask = mask;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly void Store(int i, int j, float acc)
    {
        int at = (i * Ldc) + j;
        float value = Mask.Apply(Alpha * acc, at);
        if (Beta != 0f)
        {
            value += Beta * C[at];
        }

        if (HasBias != 0)
        {
            value += Bias[j];
        }

        C[at] = value;
    }
}
