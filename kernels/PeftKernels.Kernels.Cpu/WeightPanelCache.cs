// The bf16-pair B panels of one frozen weight, kept across GEMM calls (KernelOptions.Compute = Bf16 with
// a pair micro-kernel: AVX512-BF16 12×32 or AMX 32×32).
// Why: in the LoRA training step every frozen weight W [out, in] is an operand of two GEMMs per step,
//   forward   y  = [x | s·h] · [W | B]ᵀ   op(B) = Wᵀ, K = in  (+ r)   layout WeightPanelLayout.Transposed
//   backward  dx = [g | dh] · [W ; A]    op(B) = W,  K = out (+ r)   layout WeightPanelLayout.Rows
// and packing W into bf16 pairs for each was 10–18 % of the bf16 step (docs/performance.md, session 13).
// Packed once, a K block of W is the same words on every later call: the driver then reads the kept
// panel in place of packing (GemmDriver, bf16 branch), so the weight is neither read nor packed again.
// Entry = one K block [p0, p0 + kc) × one N chunk [jc, jc + nc) of op(B) for one NR: ⌈nc/NR⌉ strips of
// ⌈kc/2⌉·NR bf16-pair words, strip after strip (the packed words of Bf16PairPack, bit for bit).
// Memory: op(B) of K × N takes ≈ 2·K·N bytes per layout (N padded to NR), so a weight used in both
// directions costs 4 bytes per element: the same as an fp32 copy of it (the ~125M Llama's 7 LoRA'd
// linears and lm_head: ≈ 440 MiB). KernelOptions.NoWeightPanelCache turns it off per call.
// Validity is the owner's job: the panels are the weight's values at the time they were packed, so the
// owner (PeftKernels' Tensor: bumps a version on every hand-out of its mutable storage) calls Clear()
// when the weight may have changed. Thread safety: entries are looked up and added under a lock; an
// entry is a pinned array that the GEMM holds while it reads it, so Clear() never frees memory in use,
// and a panel packed from a weight that was cleared in between is not added (the generation check).
using System.Runtime.InteropServices;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Which form of a frozen weight W [out, in] a GEMM reads as op(B).</summary>
public enum WeightPanelLayout
{
    /// <summary>op(B) = Wᵀ [in, out]: y = x·Wᵀ (forward).</summary>
    Transposed,

    /// <summary>op(B) = W [out, in]: dx = g·W (backward).</summary>
    Rows,
}

/// <summary>
/// Packed bf16-pair panels of one frozen weight, kept across calls by bf16-compute GEMMs (attach with
/// <see cref="WeightOperand.WithPanelCache"/>). The owner must call <see cref="Clear"/> whenever the weight's values change.
/// </summary>
public sealed class WeightPanelCache
{
    private readonly object gate = new();
    private Dictionary<Key, uint[]> panels = [];
    private long generation;
    private long bytes;

    /// <summary>Bytes held by the kept panels.</summary>
    public long Bytes
    {
        get
        {
            lock (gate)
            {
                return bytes;
            }
        }
    }

    /// <summary>Number of kept panels (one per K block, N chunk, layout and micro-kernel width).</summary>
    public int Count
    {
        get
        {
            lock (gate)
            {
                return panels.Count;
            }
        }
    }

    /// <summary>Panels read from the cache instead of packed, since start (all caches; for tests).</summary>
    internal static long Hits => Interlocked.Read(ref hits);

    /// <summary>Panels packed and added, since start (all caches; for tests).</summary>
    internal static long Misses => Interlocked.Read(ref misses);

    private static long hits, misses;

    /// <summary>Drops every kept panel (the weight changed); GEMMs reading one now finish with it.</summary>
    public void Clear()
    {
        lock (gate)
        {
            panels = [];
            bytes = 0;
            generation++;
        }
    }

    /// <summary>The kept panel of (layout, nr, jc, p0, kc), or null; <paramref name="gen"/> is the generation to add a packed one under.</summary>
    internal uint[]? Find(WeightPanelLayout layout, int nr, int jc, int p0, int kc, out long gen)
    {
        lock (gate)
        {
            gen = generation;
            if (panels.TryGetValue(new Key(layout, nr, jc, p0, kc), out var panel))
            {
                Interlocked.Increment(ref hits);
                return panel;
            }

            Interlocked.Increment(ref misses);
            return null;
        }
    }

    /// <summary>Keeps <paramref name="panel"/> unless the cache was cleared since generation <paramref name="gen"/> (then the panel may be stale).</summary>
    internal void Add(WeightPanelLayout layout, int nr, int jc, int p0, int kc, uint[] panel, long gen)
    {
        lock (gate)
        {
            if (gen == generation && panels.TryAdd(new Key(layout, nr, jc, p0, kc), panel))
            {
                bytes += panel.LongLength * sizeof(uint);
            }
        }
    }

    /// <summary>A pinned array for a panel of <paramref name="words"/> 32-bit words (its address is stable while it lives).</summary>
    internal static uint[] NewPanel(long words) => GC.AllocateUninitializedArray<uint>(checked((int)words), pinned: true);

    /// <summary>The address of a pinned panel.</summary>
    internal static unsafe float* Address(uint[] panel) => (float*)Marshal.UnsafeAddrOfPinnedArrayElement(panel, 0);

    private readonly record struct Key(WeightPanelLayout Layout, int Nr, int Jc, int P0, int Kc);
}

/// <summary>
/// A GEMM's op(B) whose first <see cref="K1"/> rows along K are a frozen weight read in <see cref="Layout"/> (the
/// rest, if any, is LoRA's factor); bf16 compute splits the K blocks at K1 and reads those of the weight from
/// <see cref="Cache"/> when there is one. Default: no weight (nothing changes).
/// </summary>
internal readonly struct WeightPanels(WeightPanelCache? cache, WeightPanelLayout layout, int k1)
{
    public readonly WeightPanelCache? Cache = cache;
    public readonly WeightPanelLayout Layout = layout;
    public readonly int K1 = k1;

    /// <summary>The operand's cache unless the call turned caching off.</summary>
    public static WeightPanelCache? Of(in WeightOperand w, in KernelOptions options) =>
        options.Compute == ComputePrecision.Bf16 && !options.NoWeightPanelCache ? w.PanelCache : null;
}
