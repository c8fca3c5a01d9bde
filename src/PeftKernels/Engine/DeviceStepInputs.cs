// The small per-step arrays the device engine uploads (DeviceBatchForward): one int array and one float
// array, filled on the host and each copied to the device in one transfer, then read through sub-views:
//   ints   tokens [n] | positions [n] | rowTables [n] | tables [Σ blocks] | logitSource [m] | segmentStarts [S + 1]
//          | per (layer, projection, chunk of adapter slots) with rows in the step: segment adapters [S]
//   floats at the same offsets as those segment adapters: the segments' LoRA scales [S] (else unused)
// rowTables[i] is where row i's sequence's block table starts in `tables`; logitSource[r] the row whose
// hidden state gives logits row r; segment t is sequence t's rows (one adapter each), its adapter the
// index in that chunk's pool or −1 (no LoRA there, or another chunk). The host buffers and device buffers
// are allocated once for the engine's maximum rows and sequences and one chunk of slots; they grow (an
// allocation, then reused) only when more adapter chunks are resident than ever before or a block table
// outgrows the bound.
using FloatView = ILGPU.Runtime.ArrayView1D<float, ILGPU.Stride1D.Dense>;
using IntView = ILGPU.Runtime.ArrayView1D<int, ILGPU.Stride1D.Dense>;

namespace PeftKernels.Engine;

/// <summary>The step's token ids, positions, block tables and segment data, uploaded once per step.</summary>
internal sealed class StepInputs : IDisposable
{
    private readonly Accelerator accelerator;
    private readonly int layers;
    private int[] ints;
    private float[] floats;
    private int[] sgmvAt = [];
    private int chunks;
    private DeviceArray<int> deviceInts;
    private DeviceArray<float> deviceFloats;

    public StepInputs(Accelerator accelerator, int layers, int maxRows, int maxSequences, int blocksPerSequence)
    {
        this.accelerator = accelerator;
        this.layers = layers;
        long capacity = (3L * maxRows) + ((long)maxSequences * blocksPerSequence) + (2L * maxSequences) + 1 + ((long)layers * Projections.Count * maxSequences);
        ints = new int[capacity];
        floats = new float[capacity];
        deviceInts = accelerator.Rent<int>(capacity);
        deviceFloats = accelerator.Rent<float>(capacity);
    }

    /// <summary>Times the buffers grew after construction.</summary>
    public int Growths { get; private set; }

    /// <summary>Segments (sequences) in the step.</summary>
    public int Count { get; private set; }

    public IntView Tokens { get; private set; }

    public IntView Positions { get; private set; }

    public IntView RowTables { get; private set; }

    public IntView Tables { get; private set; }

    public IntView LogitSource { get; private set; }

    public IntView SegmentStarts { get; private set; }

    /// <summary>Offset of the segment adapters (and scales) of (layer, projection, chunk), or −1 when no row of the step has LoRA there.</summary>
    public int SgmvAt(int layer, int p, int chunk) => sgmvAt[(((layer * Projections.Count) + p) * chunks) + chunk];

    /// <summary>The segments' adapter indices at <paramref name="at"/> (<see cref="SgmvAt"/>).</summary>
    public IntView SegmentAdapters(int at) => deviceInts.View.SubView(at, Count);

    /// <summary>The segments' LoRA scales at <paramref name="at"/>.</summary>
    public FloatView SegmentScales(int at) => deviceFloats.View.SubView(at, Count);

    /// <summary>Fills the host arrays from the batch and the adapter table, then uploads them (two transfers).</summary>
    public void Fill(StepBatch batch, AdapterTable table, DeviceAdapterTable device)
    {
        int n = batch.Rows, count = batch.Count, m = batch.LogitRows;
        Count = count;
        chunks = table.Slots / AdapterTable.ChunkSize;
        if (sgmvAt.Length < layers * Projections.Count * chunks)
        {
            sgmvAt = new int[layers * Projections.Count * chunks]; // host only, when a new chunk of slots appears
        }

        int tableTotal = 0;
        for (int s = 0; s < count; s++)
        {
            tableTotal += batch.Sequences[s].Table.Length;
        }

        long need = (3L * n) + tableTotal + m + count + 1 + ((long)layers * Projections.Count * chunks * count);
        Ensure(need);
        batch.Tokens.AsSpan(0, n).CopyTo(ints);
        batch.Positions.AsSpan(0, n).CopyTo(ints.AsSpan(n));
        int at = 3 * n;
        for (int s = 0; s < count; s++)
        {
            var t = batch.Sequences[s].Table;
            ints.AsSpan(2 * n).Slice(batch.SequenceStart[s], batch.SequenceStart[s + 1] - batch.SequenceStart[s]).Fill(at - (3 * n)); // relative to the tables view
            t.CopyTo(ints.AsSpan(at));
            at += t.Length;
        }

        int logitAt = at;
        for (int s = 0; s < count; s++)
        {
            if (batch.LogitRow[s] >= 0)
            {
                ints[logitAt + batch.LogitRow[s]] = batch.SequenceStart[s + 1] - 1;
            }
        }

        at += m;
        int startsAt = at;
        batch.SequenceStart.AsSpan(0, count + 1).CopyTo(ints.AsSpan(at));
        at += count + 1;
        at = FillSegments(batch, table, device, at);
        DeviceSync.Upload<int>(deviceInts.View.SubView(0, at), ints.AsSpan(0, at));
        DeviceSync.Upload<float>(deviceFloats.View.SubView(0, at), floats.AsSpan(0, at));
        var view = deviceInts.View;
        Tokens = view.SubView(0, n);
        Positions = view.SubView(n, n);
        RowTables = view.SubView(2 * n, n);
        Tables = view.SubView(3 * n, tableTotal);
        LogitSource = view.SubView(logitAt, m);
        SegmentStarts = view.SubView(startsAt, count + 1);
    }

    public void Dispose()
    {
        deviceInts.Dispose();
        deviceFloats.Dispose();
    }

    /// <summary>Per (layer, projection, chunk) with a device pool and some row of the step on it: each segment's adapter index and scale.</summary>
    private int FillSegments(StepBatch batch, AdapterTable table, DeviceAdapterTable device, int at)
    {
        int count = batch.Count;
        for (int l = 0; l < layers; l++)
        {
            for (int p = 0; p < Projections.Count; p++)
            {
                var e = table.At(l, p);
                var de = device.At(l, p);
                for (int c = 0; c < chunks; c++)
                {
                    int index = (((l * Projections.Count) + p) * chunks) + c;
                    sgmvAt[index] = -1;
                    if (!e.AnyLora || c >= de.Packs.Length || de.Packs[c] == null)
                    {
                        continue;
                    }

                    bool any = false;
                    for (int s = 0; s < count; s++)
                    {
                        int slot = batch.Slot[s];
                        bool mine = slot >= 0 && slot / AdapterTable.ChunkSize == c;
                        ints[at + s] = mine ? e.PackIndex[slot] : -1;
                        floats[at + s] = mine ? e.Scale[slot] : 0f;
                        any |= mine && e.PackIndex[slot] >= 0;
                    }

                    if (any)
                    {
                        sgmvAt[index] = at;
                        at += count;
                    }
                }
            }
        }

        return at;
    }

    /// <summary>Grows the host and device arrays to hold <paramref name="need"/> values (rare: see the file header).</summary>
    private void Ensure(long need)
    {
        if (need <= ints.Length)
        {
            return;
        }

        long capacity = Math.Max(need, 2L * ints.Length);
        ints = new int[capacity];
        floats = new float[capacity];
        deviceInts.Dispose();
        deviceFloats.Dispose();
        deviceInts = accelerator.Rent<int>(capacity);
        deviceFloats = accelerator.Rent<float>(capacity);
        Growths++;
    }
}
