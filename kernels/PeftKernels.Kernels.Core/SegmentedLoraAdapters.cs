// The adapter table of the segmented LoRA kernels (SegmentedLora: SGMV and BGMV): K adapters of
// (possibly) different ranks r_k over one Linear's in and out features, all held in one fp32 pool
// without padding to a maximum rank. Adapter k's factors are PEFT's layout, row-major, in the pool:
//   A_k = factors[aOffsets[k] .. aOffsets[k] + r_k·in)    [r_k, in]   (lora_A.weight)
//   B_k = factors[bOffsets[k] .. bOffsets[k] + out·r_k)   [out, r_k]  (lora_B.weight)
// The offsets are free: an engine keeps one pool per projection, writes a newly loaded adapter into a
// free region, and replaces or evicts one adapter without moving the others; a call reads the pool in
// place (no copy per call). 64 adapters of rank 128 at in = out = 768 take 64·128·1536 floats (48 MiB).
// SegmentedLoraPack builds such a pool from per-adapter (A, B) arrays, checking each pair's rank.
namespace PeftKernels.Kernels;

/// <summary>K LoRA adapters of possibly different ranks in one fp32 pool: adapter k's A [r_k, in] at <see cref="AOffsets"/>[k] and B [out, r_k] at <see cref="BOffsets"/>[k].</summary>
/// <param name="factors">The pool holding every adapter's A and B (row-major fp32).</param>
/// <param name="ranks">r_k per adapter (each ≥ 1); its length is the adapter count K.</param>
/// <param name="aOffsets">Start of A_k in <paramref name="factors"/>, per adapter.</param>
/// <param name="bOffsets">Start of B_k in <paramref name="factors"/>, per adapter.</param>
public readonly ref struct SegmentedLoraAdapters(ReadOnlySpan<float> factors, ReadOnlySpan<int> ranks, ReadOnlySpan<int> aOffsets, ReadOnlySpan<int> bOffsets)
{
    /// <summary>The pool of factors.</summary>
    public ReadOnlySpan<float> Factors { get; } = factors;

    /// <summary>Rank per adapter.</summary>
    public ReadOnlySpan<int> Ranks { get; } = ranks;

    /// <summary>Start of each adapter's A in <see cref="Factors"/>.</summary>
    public ReadOnlySpan<int> AOffsets { get; } = aOffsets;

    /// <summary>Start of each adapter's B in <see cref="Factors"/>.</summary>
    public ReadOnlySpan<int> BOffsets { get; } = bOffsets;

    /// <summary>The adapter count K (valid adapter indices are 0 … K − 1; −1 means no adapter).</summary>
    public int Count => Ranks.Length;
}

/// <summary>A pool built by copying per-adapter factors once (at load time), for <see cref="SegmentedLoraAdapters"/>.</summary>
public sealed class SegmentedLoraPack
{
    private SegmentedLoraPack(float[] factors, int[] ranks, int[] aOffsets, int[] bOffsets)
    {
        Factors = factors;
        Ranks = ranks;
        AOffsets = aOffsets;
        BOffsets = bOffsets;
    }

    /// <summary>The pool: A_0, B_0, A_1, B_1, … back to back.</summary>
    public float[] Factors { get; }

    /// <summary>Rank per adapter.</summary>
    public int[] Ranks { get; }

    /// <summary>Start of each adapter's A.</summary>
    public int[] AOffsets { get; }

    /// <summary>Start of each adapter's B.</summary>
    public int[] BOffsets { get; }

    /// <summary>The table the kernels take.</summary>
    public SegmentedLoraAdapters Adapters => new(Factors, Ranks, AOffsets, BOffsets);

    /// <summary>Packs adapter k = (a[k] [r_k, in], b[k] [out, r_k]); r_k is read from a[k] and must match b[k].</summary>
    /// <param name="a">Each adapter's A, length r_k·in.</param>
    /// <param name="b">Each adapter's B, length out·r_k.</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <exception cref="ArgumentException">The lists differ in length, a length is not a positive multiple of the features, or A's and B's ranks differ.</exception>
    public static SegmentedLoraPack Pack(IReadOnlyList<float[]> a, IReadOnlyList<float[]> b, int inFeatures, int outFeatures)
    {
        var ranks = SegmentedLoraShapes.PackRanks(a, b, inFeatures, outFeatures);
        int k = ranks.Length;
        var aOffsets = new int[k];
        var bOffsets = new int[k];
        long total = 0;
        for (int i = 0; i < k; i++)
        {
            aOffsets[i] = (int)total;
            total += a[i].Length;
            bOffsets[i] = (int)total;
            total += b[i].Length;
            Check.Require(total <= Array.MaxLength, nameof(a), $"The adapters hold {total} floats by adapter {i}; one pool holds at most {Array.MaxLength}.");
        }

        var factors = GC.AllocateUninitializedArray<float>((int)total);
        for (int i = 0; i < k; i++)
        {
            a[i].CopyTo(factors, aOffsets[i]);
            b[i].CopyTo(factors, bOffsets[i]);
        }

        return new SegmentedLoraPack(factors, ranks, aOffsets, bOffsets);
    }
}
