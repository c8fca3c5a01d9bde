// One array rented from a DeviceMemoryPool: a typed view of exactly the requested length over a
// block of its size class. Dispose hands the block back to the pool (once; no device wait, see
// DeviceMemoryPool); reading View after that throws, so a use after return fails loudly instead of
// reading another tensor's data. An array that is never disposed returns when it is finalized.
using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Gpu;

/// <summary>A device array of <typeparamref name="T"/> on loan from a <see cref="DeviceMemoryPool"/>.</summary>
public sealed class DeviceArray<T> : IDisposable
    where T : unmanaged
{
    private readonly DeviceMemoryPool pool;
    private readonly ArrayView1D<T, Stride1D.Dense> view;
    private MemoryBuffer1D<byte, Stride1D.Dense>? block;
    private bool returned;

    internal DeviceArray(DeviceMemoryPool pool, MemoryBuffer1D<byte, Stride1D.Dense>? block, long length)
    {
        this.pool = pool;
        this.block = block;
        Length = length;
        view = block == null ? default : block.View.SubView(0, length * Unsafe.SizeOf<T>()).Cast<byte, T>();
        if (block == null)
        {
            GC.SuppressFinalize(this);
        }
    }

    /// <summary>Finalizes an array nobody disposed: its block goes back to the pool.</summary>
    ~DeviceArray() => Release();

    /// <summary>The accelerator the array lives on.</summary>
    public Accelerator Accelerator => pool.Accelerator;

    /// <summary>Number of elements.</summary>
    public long Length { get; }

    /// <summary>Bytes of the elements (not of the block, which is its size class).</summary>
    public long LengthInBytes => Length * Unsafe.SizeOf<T>();

    /// <summary>The elements (an empty default view for length 0).</summary>
    /// <exception cref="ObjectDisposedException">The array was handed back.</exception>
    public ArrayView1D<T, Stride1D.Dense> View
    {
        get
        {
            ObjectDisposedException.ThrowIf(returned, this);
            return view;
        }
    }

    /// <summary>Queues zero-filling the elements on the stream (no wait; nothing for length 0).</summary>
    public void Clear()
    {
        if (Length > 0)
        {
            View.MemSetToZero();
        }
    }

    /// <summary>Hands the block back to the pool (no device wait).</summary>
    public void Dispose()
    {
        returned = true;
        Release();
        GC.SuppressFinalize(this);
    }

    private void Release()
    {
        var b = Interlocked.Exchange(ref block, null);
        if (b != null)
        {
            pool.Return(b);
        }
    }
}
