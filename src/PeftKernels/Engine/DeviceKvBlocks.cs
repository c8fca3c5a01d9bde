// The keys and values of a KvBlockPool on a device (the device engine's paged KV cache): per layer
// one buffer for K and one for V, [numBlocks, blockSize, kvHeads, headDim], the host pool's layout,
// indexed by the host pool's block ids (the block accounting, free list, reference counts and prefix
// index stay on the host). Allocated once with the pool and zero-filled (a kernel never reads a
// position before it is written, but a zeroed buffer keeps a bug from reading old NaNs). Every
// operation is enqueued on the accelerator's default stream, so it is ordered with the step's
// kernels without a wait:
//   CopyBlock(s, t)  K[l][t] = K[l][s], V[l][t] = V[l][s] for every layer (copy on write of a shared block)
//   WriteRow         one position's K/V rows uploaded from the host (prompt learning's virtual positions)
using FloatView = ILGPU.Runtime.ArrayView1D<float, ILGPU.Stride1D.Dense>;

namespace PeftKernels.Engine;

/// <summary>Device storage of a paged KV cache: one K and one V buffer per layer, [numBlocks, blockSize, kvDim].</summary>
internal sealed class DeviceKvBlocks : IDisposable
{
    private readonly DeviceArray<float>[] keys;
    private readonly DeviceArray<float>[] values;
    private readonly int blockFloats;

    /// <summary>Allocates <paramref name="layers"/> K and V buffers of <paramref name="perLayer"/> floats each.</summary>
    public DeviceKvBlocks(Accelerator accelerator, int layers, long perLayer, int blockFloats)
    {
        Accelerator = accelerator;
        this.blockFloats = blockFloats;
        keys = new DeviceArray<float>[layers];
        values = new DeviceArray<float>[layers];
        try
        {
            for (int l = 0; l < layers; l++)
            {
                keys[l] = accelerator.Rent<float>(perLayer);
                values[l] = accelerator.Rent<float>(perLayer);
                keys[l].Clear();
                values[l].Clear();
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The device.</summary>
    public Accelerator Accelerator { get; }

    /// <summary>Bytes held on the device (K and V, every layer).</summary>
    public long Bytes => keys.Sum(b => b?.LengthInBytes ?? 0) + values.Sum(b => b?.LengthInBytes ?? 0);

    /// <summary>Layer <paramref name="layer"/>'s keys [numBlocks, blockSize, kvDim].</summary>
    public FloatView Keys(int layer) => keys[layer].View;

    /// <summary>Layer <paramref name="layer"/>'s values [numBlocks, blockSize, kvDim].</summary>
    public FloatView Values(int layer) => values[layer].View;

    /// <summary>Copies block <paramref name="source"/> into <paramref name="target"/> in every layer, device to device.</summary>
    public void CopyBlock(int source, int target)
    {
        for (int l = 0; l < keys.Length; l++)
        {
            keys[l].View.SubView((long)target * blockFloats, blockFloats).CopyFrom(keys[l].View.SubView((long)source * blockFloats, blockFloats));
            values[l].View.SubView((long)target * blockFloats, blockFloats).CopyFrom(values[l].View.SubView((long)source * blockFloats, blockFloats));
        }
    }

    /// <summary>Uploads the key and value rows of cache row <paramref name="row"/> (block·blockSize + slot) in <paramref name="layer"/>.</summary>
    public void WriteRow(int layer, long row, ReadOnlySpan<float> key, ReadOnlySpan<float> value)
    {
        int width = key.Length;
        DeviceSync.Upload<float>(keys[layer].View.SubView(row * width, width), key);
        DeviceSync.Upload<float>(values[layer].View.SubView(row * width, width), value);
    }

    /// <summary>Frees the buffers.</summary>
    public void Dispose()
    {
        foreach (var b in keys.Concat(values))
        {
            b?.Dispose();
        }
    }
}
