// The engine's per-projection view of every adapter it serves: for each decoder layer l and
// projection p (q, k, v, o, gate, up, down), the LoRA factors of all served adapters packed into one
// SGMV/BGMV pool (ranks differ, none padded), and per adapter slot the pool index (−1: the adapter has
// no LoRA here), its scale, its DoRA column factor, its lora bias and its IA³ vector. A slot is an
// adapter's index in the list the table is built from; a row's adapter is a slot or −1 (the base).
// Built once whenever the set of served adapters changes (adapters are immutable once loaded), so a
// step only reads it.
using System.Runtime.InteropServices;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Models;
using PeftKernels.Nn;

namespace PeftKernels.Engine;

/// <summary>The projections of a Llama decoder layer, in the engine's order.</summary>
internal static class Projections
{
    public const int Q = 0, K = 1, V = 2, O = 3, Gate = 4, Up = 5, Down = 6, Count = 7;

    public static readonly string[] Names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

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

/// <summary>Every served adapter's per-projection data, packed per (layer, projection).</summary>
internal sealed class AdapterTable
{
    private readonly Entry[] entries;

    private AdapterTable(int layers, int slots, Entry[] entries)
    {
        Layers = layers;
        Slots = slots;
        this.entries = entries;
    }

    /// <summary>An empty table (the base model only).</summary>
    public static AdapterTable Empty(int layers) =>
        new(layers, 0, [.. Enumerable.Range(0, layers * Projections.Count).Select(_ => new Entry(null, [], [], [], [], [], [], false, false, false))]);

    /// <summary>Decoder layers.</summary>
    public int Layers { get; }

    /// <summary>Adapter slots.</summary>
    public int Slots { get; }

    /// <summary>The packed data of projection <paramref name="p"/> of layer <paramref name="layer"/>.</summary>
    public Entry At(int layer, int p) => entries[(layer * Projections.Count) + p];

    /// <summary>
    /// Packs <paramref name="adapters"/> (slot k = index k; each [layers, projections], null where the adapter does nothing) for
    /// layers whose projection p has <paramref name="shapes"/>[p] = (in, out).
    /// </summary>
    public static AdapterTable Build(int layers, IReadOnlyList<EngineAdapter> adapters, (int In, int Out)[] shapes)
    {
        int slots = adapters.Count;
        var entries = new Entry[layers * Projections.Count];
        for (int l = 0; l < layers; l++)
        {
            for (int p = 0; p < Projections.Count; p++)
            {
                var packIndex = new int[slots];
                var scale = new float[slots];
                var bias = new float[]?[slots];
                var dora = new float[]?[slots];
                var ia3 = new float[]?[slots];
                var ia3Ff = new bool[slots];
                var a = new List<float[]>();
                var b = new List<float[]>();
                for (int k = 0; k < slots; k++)
                {
                    var module = adapters[k].Get(l, (Projection)p);
                    packIndex[k] = -1;
                    if (module == null)
                    {
                        continue;
                    }

                    if (module.Kind != AdapterKind.Ia3)
                    {
                        packIndex[k] = a.Count;
                        a.Add(ArrayOf(module.A));
                        b.Add(ArrayOf(module.B));
                        bias[k] = Scaled(module.LoraBias, module.Scale, module.ColumnScale);
                        dora[k] = module.ColumnScale.IsEmpty ? null : module.ColumnScale.ToArray();
                    }

                    scale[k] = module.Scale;
                    ia3[k] = module.Ia3.IsEmpty ? null : module.Ia3.ToArray();
                    ia3Ff[k] = module.Ia3Feedforward;
                }

                var pack = a.Count == 0 ? null : SegmentedLoraPack.Pack(a, b, shapes[p].In, shapes[p].Out);
                entries[(l * Projections.Count) + p] = new Entry(pack, packIndex, scale, bias, dora, ia3, ia3Ff,
                    dora.Any(d => d != null), ia3.Where((v, k) => v != null && ia3Ff[k]).Any(), ia3.Where((v, k) => v != null && !ia3Ff[k]).Any());
            }
        }

        return new AdapterTable(layers, slots, entries);
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

    /// <summary>One (layer, projection): the LoRA pool and per-slot data.</summary>
    /// <param name="Pack">The LoRA factors of the slots that have LoRA here, or null when none has.</param>
    /// <param name="PackIndex">Per slot: its index in <paramref name="Pack"/>, or −1.</param>
    /// <param name="Scale">Per slot: the LoRA scale.</param>
    /// <param name="LoraBias">Per slot: s·bias_B (·g) or null.</param>
    /// <param name="DoraScale">Per slot: DoRA's g or null.</param>
    /// <param name="Ia3">Per slot: the IA³ vector or null.</param>
    /// <param name="Ia3Feedforward">Per slot: the IA³ vector scales the input.</param>
    /// <param name="AnyDora">Some slot is DoRA here.</param>
    /// <param name="AnyIa3Input">Some slot scales this projection's input.</param>
    /// <param name="AnyIa3Output">Some slot scales this projection's output.</param>
    internal sealed record Entry(SegmentedLoraPack? Pack, int[] PackIndex, float[] Scale, float[]?[] LoraBias, float[]?[] DoraScale,
        float[]?[] Ia3, bool[] Ia3Feedforward, bool AnyDora, bool AnyIa3Input, bool AnyIa3Output);
}
