// The engine's per-projection view of every adapter it serves: for each decoder layer l and
// projection p (q, k, v, o, gate, up, down), the LoRA factors of the served adapters packed into
// SGMV/BGMV pools (ranks differ, none padded), and per adapter slot the index in its pool (−1: the
// adapter has no LoRA here), its scale, its DoRA column factor, its lora bias and its IA³ vector.
// Slots are stable: an adapter version keeps its slot while it is resident, a freed slot is reused.
// Slots are grouped in chunks of ChunkSize, one pool per (chunk, layer, projection), so loading or
// freeing an adapter re-packs only its chunk, not every resident adapter (a cold load among 64
// resident adapters copied them all before). A step runs one BGMV per chunk that has rows in it.
// Updated only between steps, by the thread that steps the engine; a step only reads it.
using System.Runtime.InteropServices;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Models;
using PeftKernels.Nn;

namespace PeftKernels.Engine;

/// <summary>The projections of a Llama decoder layer as indices (the <see cref="Projection"/> order) and their Linear modules.</summary>
internal static class Projections
{
    public const int Q = (int)Projection.Q, K = (int)Projection.K, V = (int)Projection.V, O = (int)Projection.O,
        Gate = (int)Projection.Gate, Up = (int)Projection.Up, Down = (int)Projection.Down, Count = EngineAdapter.ProjectionCount;

    /// <summary>The Linear of projection <paramref name="p"/> in <paramref name="layer"/>.</summary>
    public static Linear Of(LlamaDecoderLayer layer, int p) => p switch
    {
        Q => layer.SelfAttn.QProj,
        K => layer.SelfAttn.KProj,
        V => layer.SelfAttn.VProj,
        O => layer.SelfAttn.OProj,
        Gate => layer.Mlp.GateProj,
        Up => layer.Mlp.UpProj,
        _ => layer.Mlp.DownProj,
    };
}

/// <summary>Every served adapter's per-projection data, packed per (chunk of slots, layer, projection).</summary>
internal sealed partial class AdapterTable
{
    /// <summary>Slots per pool.</summary>
    public const int ChunkSize = 8;

    private readonly Entry[] entries;
    private readonly (int In, int Out)[] shapes;
    private readonly Dictionary<EngineAdapter, int> slotOf = [];
    private EngineAdapter?[] slots = [];

    public AdapterTable(int layers, (int In, int Out)[] shapes)
    {
        Layers = layers;
        this.shapes = shapes;
        entries = [.. Enumerable.Range(0, layers * Projections.Count).Select(_ => new Entry())];
    }

    /// <summary>A table with no adapter (the base model only).</summary>
    public static AdapterTable Empty(int layers) => new(layers, []);

    /// <summary>Decoder layers.</summary>
    public int Layers { get; }

    /// <summary>Slots (a multiple of <see cref="ChunkSize"/>; some may be free).</summary>
    public int Slots => slots.Length;

    /// <summary>Chunk pools re-packed since creation.</summary>
    public long ChunkBuilds { get; private set; }

    /// <summary>The packed data of projection <paramref name="p"/> of layer <paramref name="layer"/>.</summary>
    public Entry At(int layer, int p) => entries[(layer * Projections.Count) + p];

    /// <summary>The slot of a resident version, or −1.</summary>
    public int SlotOf(EngineAdapter? adapter) => adapter != null && slotOf.TryGetValue(adapter, out int slot) ? slot : -1;

    /// <summary>Makes the table hold exactly <paramref name="resident"/>: frees the slots of versions no longer resident, gives new ones free slots, re-packs the chunks that changed.</summary>
    public void Sync(IReadOnlyList<EngineAdapter> resident)
    {
        var keep = resident.ToHashSet();
        var dirty = new HashSet<int>();
        foreach (var (adapter, slot) in slotOf.Where(p => !keep.Contains(p.Key)).ToList())
        {
            slotOf.Remove(adapter);
            slots[slot] = null;
            dirty.Add(slot / ChunkSize);
        }

        foreach (var adapter in resident.Where(a => !slotOf.ContainsKey(a)))
        {
            int slot = Array.IndexOf(slots, null);
            if (slot < 0)
            {
                slot = slots.Length;
                Array.Resize(ref slots, slots.Length + ChunkSize);
                foreach (var e in entries)
                {
                    e.Grow(slots.Length);
                }
            }

            slots[slot] = adapter;
            slotOf[adapter] = slot;
            dirty.Add(slot / ChunkSize);
        }

        foreach (int chunk in dirty)
        {
            for (int l = 0; l < Layers; l++)
            {
                for (int p = 0; p < Projections.Count; p++)
                {
                    Pack(At(l, p), chunk, l, p);
                }
            }

            ChunkBuilds++;
        }
    }

    private void Pack(Entry e, int chunk, int layer, int p)
    {
        var a = new List<float[]>();
        var b = new List<float[]>();
        for (int slot = chunk * ChunkSize; slot < (chunk + 1) * ChunkSize; slot++)
        {
            var module = slots[slot]?.Get(layer, (Projection)p);
            e.PackIndex[slot] = -1;
            e.Scale[slot] = 0;
            e.LoraBias[slot] = e.DoraScale[slot] = e.Ia3[slot] = null;
            e.Ia3Feedforward[slot] = false;
            if (module == null)
            {
                continue;
            }

            if (module.Kind != AdapterKind.Ia3)
            {
                e.PackIndex[slot] = a.Count;
                a.Add(ArrayOf(module.A));
                b.Add(ArrayOf(module.B));
                e.LoraBias[slot] = Scaled(module.LoraBias, module.Scale, module.ColumnScale);
                e.DoraScale[slot] = module.ColumnScale.IsEmpty ? null : module.ColumnScale.ToArray();
            }

            e.Scale[slot] = module.Scale;
            e.Ia3[slot] = module.Ia3.IsEmpty ? null : module.Ia3.ToArray();
            e.Ia3Feedforward[slot] = module.Ia3Feedforward;
        }

        e.Packs[chunk] = a.Count == 0 ? null : SegmentedLoraPack.Pack(a, b, shapes[p].In, shapes[p].Out);
        e.Refresh();
    }

    /// <summary>The array behind <paramref name="memory"/> when it is a whole array (no copy: SegmentedLoraPack copies once), else a copy.</summary>
    private static float[] ArrayOf(ReadOnlyMemory<float> memory) =>
        MemoryMarshal.TryGetArray(memory, out var segment) && segment.Offset == 0 && segment.Count == segment.Array!.Length ? segment.Array : memory.ToArray();

    /// <summary>s·β (times g for DoRA, whose column factor scales the whole LoRA term) or null when there is no lora bias.</summary>
    private static float[]? Scaled(ReadOnlyMemory<float> loraBias, float s, ReadOnlyMemory<float> g)
    {
        if (loraBias.IsEmpty)
        {
            return null;
        }

        var result = loraBias.ToArray();
        for (int j = 0; j < result.Length; j++)
        {
            result[j] *= s * (g.IsEmpty ? 1f : g.Span[j]);
        }

        return result;
    }

    /// <summary>One (layer, projection): a LoRA pool per chunk of slots and the per-slot data.</summary>
    internal sealed class Entry
    {
        /// <summary>Per chunk: the LoRA factors of its slots that have LoRA here, or null.</summary>
        public SegmentedLoraPack?[] Packs { get; private set; } = [];

        /// <summary>Per slot: its index in its chunk's pack, or −1.</summary>
        public int[] PackIndex { get; private set; } = [];

        /// <summary>Per slot: the LoRA scale.</summary>
        public float[] Scale { get; private set; } = [];

        /// <summary>Per slot: s·bias_B (·g) or null.</summary>
        public float[]?[] LoraBias { get; private set; } = [];

        /// <summary>Per slot: DoRA's g or null.</summary>
        public float[]?[] DoraScale { get; private set; } = [];

        /// <summary>Per slot: the IA³ vector or null.</summary>
        public float[]?[] Ia3 { get; private set; } = [];

        /// <summary>Per slot: the IA³ vector scales the input.</summary>
        public bool[] Ia3Feedforward { get; private set; } = [];

        /// <summary>Some slot has LoRA here.</summary>
        public bool AnyLora { get; private set; }

        /// <summary>Some slot is DoRA here.</summary>
        public bool AnyDora { get; private set; }

        /// <summary>Some slot scales this projection's input.</summary>
        public bool AnyIa3Input { get; private set; }

        /// <summary>Some slot scales this projection's output.</summary>
        public bool AnyIa3Output { get; private set; }

        public void Grow(int count)
        {
            int old = PackIndex.Length;
            Packs = [.. Packs, .. new SegmentedLoraPack?[(count / ChunkSize) - Packs.Length]];
            PackIndex = [.. PackIndex, .. Enumerable.Repeat(-1, count - old)];
            Scale = [.. Scale, .. new float[count - old]];
            LoraBias = [.. LoraBias, .. new float[]?[count - old]];
            DoraScale = [.. DoraScale, .. new float[]?[count - old]];
            Ia3 = [.. Ia3, .. new float[]?[count - old]];
            Ia3Feedforward = [.. Ia3Feedforward, .. new bool[count - old]];
        }

        public void Refresh()
        {
            AnyLora = Packs.Any(pk => pk != null);
            AnyDora = DoraScale.Any(d => d != null);
            AnyIa3Input = Ia3.Where((v, k) => v != null && Ia3Feedforward[k]).Any();
            AnyIa3Output = Ia3.Where((v, k) => v != null && !Ia3Feedforward[k]).Any();
        }
    }
}
