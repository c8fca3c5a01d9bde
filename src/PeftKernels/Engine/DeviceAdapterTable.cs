// The device mirror of the engine's AdapterTable (the device engine's adapter weights): per decoder
// layer and projection, each chunk's SGMV pool (SegmentedLoraPack: factors, ranks, A and B offsets)
// and each slot's DoRA column factor g, scaled lora bias s·β(·g) and IA³ vector l, as device buffers.
// Sync runs when the registry's resident set changed (after AdapterTable.Sync): whatever the host
// table re-packed (the chunk of slots an adapter was loaded into or evicted from) is uploaded once,
// and what it dropped is freed; a step only reads the buffers. The largest rank over every pool sizes
// the SGMV scratch h [rows, maxRank] (DeviceBatchForward grows it here, never during a step).
using PeftKernels.Kernels.Cpu;
using FloatView = ILGPU.Runtime.ArrayView1D<float, ILGPU.Stride1D.Dense>;
using IntView = ILGPU.Runtime.ArrayView1D<int, ILGPU.Stride1D.Dense>;

namespace PeftKernels.Engine;

/// <summary>Every served adapter's per-projection data on a device, mirroring an <see cref="AdapterTable"/>.</summary>
internal sealed class DeviceAdapterTable : IDisposable
{
    private readonly Accelerator accelerator;
    private readonly Entry[] entries;

    public DeviceAdapterTable(Accelerator accelerator, int layers)
    {
        this.accelerator = accelerator;
        entries = [.. Enumerable.Range(0, layers * Projections.Count).Select(_ => new Entry())];
    }

    /// <summary>The largest LoRA rank of any uploaded pool (0 when none).</summary>
    public int MaxRank { get; private set; }

    /// <summary>Bytes of adapter data on the device.</summary>
    public long Bytes => entries.Sum(e => e.Bytes);

    /// <summary>Buffers uploaded since creation (tests check that a step uploads none).</summary>
    public long Uploads { get; private set; }

    /// <summary>The device data of projection <paramref name="p"/> of layer <paramref name="layer"/>.</summary>
    public Entry At(int layer, int p) => entries[(layer * Projections.Count) + p];

    /// <summary>Uploads what <paramref name="table"/> holds that is not on the device yet, frees what it no longer holds.</summary>
    public void Sync(AdapterTable table)
    {
        int maxRank = 0;
        for (int l = 0; l < table.Layers; l++)
        {
            for (int p = 0; p < Projections.Count; p++)
            {
                var host = table.At(l, p);
                var device = At(l, p);
                device.Resize(host.Packs.Length, host.PackIndex.Length);
                for (int c = 0; c < host.Packs.Length; c++)
                {
                    if (!ReferenceEquals(device.Packs[c]?.Source, host.Packs[c]))
                    {
                        device.Packs[c]?.Dispose();
                        device.Packs[c] = host.Packs[c] is { } pack ? Upload(pack, table.Shape(p)) : null;
                    }

                    maxRank = Math.Max(maxRank, device.Packs[c]?.MaxRank ?? 0);
                }

                for (int s = 0; s < host.PackIndex.Length; s++)
                {
                    device.DoraScale[s] = Mirror(device.DoraScale[s], host.DoraScale[s]);
                    device.LoraBias[s] = Mirror(device.LoraBias[s], host.LoraBias[s]);
                    device.Ia3[s] = Mirror(device.Ia3[s], host.Ia3[s]);
                }
            }
        }

        MaxRank = maxRank;
    }

    /// <summary>Frees every buffer.</summary>
    public void Dispose()
    {
        foreach (var e in entries)
        {
            e.Dispose();
        }
    }

    private Pack Upload(SegmentedLoraPack pack, (int In, int Out) shape)
    {
        int maxRank = SegmentedLoraKernels.CheckAdapters(pack.Ranks, pack.AOffsets, pack.BOffsets, pack.Factors.Length, shape.In, shape.Out);
        Uploads += 4;
        return new Pack(pack, accelerator.Upload(pack.Factors), accelerator.Upload(pack.Ranks), accelerator.Upload(pack.AOffsets),
            accelerator.Upload(pack.BOffsets), maxRank);
    }

    private Vector? Mirror(Vector? current, float[]? host)
    {
        if (ReferenceEquals(current?.Source, host))
        {
            return current;
        }

        current?.Dispose();
        if (host == null)
        {
            return null;
        }

        Uploads++;
        return new Vector(host, accelerator.Upload(host));
    }

    /// <summary>One chunk's SGMV pool on the device.</summary>
    internal sealed class Pack(SegmentedLoraPack source, DeviceArray<float> factors, DeviceArray<int> ranks,
        DeviceArray<int> aOffsets, DeviceArray<int> bOffsets, int maxRank) : IDisposable
    {
        public SegmentedLoraPack Source { get; } = source;

        public FloatView Factors => factors.View;

        public IntView Ranks => ranks.View;

        public IntView AOffsets => aOffsets.View;

        public IntView BOffsets => bOffsets.View;

        public int MaxRank { get; } = maxRank;

        public long Bytes => factors.LengthInBytes + ranks.LengthInBytes + aOffsets.LengthInBytes + bOffsets.LengthInBytes;

        public void Dispose()
        {
            factors.Dispose();
            ranks.Dispose();
            aOffsets.Dispose();
            bOffsets.Dispose();
        }
    }

    /// <summary>One per-slot vector on the device, with the host array it mirrors.</summary>
    internal sealed class Vector(float[] source, DeviceArray<float> buffer) : IDisposable
    {
        public float[] Source { get; } = source;

        public FloatView View => buffer.View;

        public long Bytes => buffer.LengthInBytes;

        public void Dispose() => buffer.Dispose();
    }

    /// <summary>One (layer, projection) on the device: a pool per chunk, vectors per slot.</summary>
    internal sealed class Entry : IDisposable
    {
        public Pack?[] Packs { get; private set; } = [];

        public Vector?[] DoraScale { get; private set; } = [];

        public Vector?[] LoraBias { get; private set; } = [];

        public Vector?[] Ia3 { get; private set; } = [];

        public long Bytes => Packs.Sum(p => p?.Bytes ?? 0) + DoraScale.Concat(LoraBias).Concat(Ia3).Sum(v => v?.Bytes ?? 0);

        public void Resize(int chunks, int slots)
        {
            if (Packs.Length < chunks)
            {
                Packs = [.. Packs, .. new Pack?[chunks - Packs.Length]];
            }

            if (DoraScale.Length < slots)
            {
                DoraScale = [.. DoraScale, .. new Vector?[slots - DoraScale.Length]];
                LoraBias = [.. LoraBias, .. new Vector?[slots - LoraBias.Length]];
                Ia3 = [.. Ia3, .. new Vector?[slots - Ia3.Length]];
            }
        }

        public void Dispose()
        {
            foreach (var d in Packs.OfType<IDisposable>().Concat(DoraScale).Concat(LoraBias).Concat(Ia3).OfType<IDisposable>())
            {
                d.Dispose();
            }
        }
    }
}
