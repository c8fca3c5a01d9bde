using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// The GPU kernel tests share one ILGPU CPU accelerator (loaded kernels are cached per accelerator,
/// so each kernel is compiled once per test run) and run one class at a time. The simulated device
/// has NVIDIA's warp size (32) and 256 threads per group, the largest group any kernel uses; one
/// multiprocessor, because the simulated threads already outnumber this machine's cores.
/// Assertions are on, so an out-of-range view access fails the test instead of reading garbage.
/// </summary>
[CollectionDefinition("Gpu")]
public sealed class GpuCollection : ICollectionFixture<GpuFixture>;

public sealed class GpuFixture : IDisposable
{
    public GpuFixture()
    {
        Context = Context.Create(b => b.CPU(new CPUDevice(32, 8, 1)).Assertions().EnableAlgorithms());
        Accelerator = Context.CreateCPUAccelerator(0);
    }

    public Context Context { get; }

    public Accelerator Accelerator { get; }

    public MemoryBuffer1D<T, Stride1D.Dense> Upload<T>(T[] data)
        where T : unmanaged =>
        data.Length == 0 ? Accelerator.Allocate1D<T>(0) : Accelerator.Allocate1D(data);

    /// <summary>A buffer filled with NaN: outputs must be written, never read.</summary>
    public MemoryBuffer1D<float, Stride1D.Dense> Poisoned(long length) => Upload(Enumerable.Repeat(float.NaN, (int)length).ToArray());

    public float[] Download(ArrayView1D<float, Stride1D.Dense> view)
    {
        Accelerator.Synchronize();
        return view.GetAsArray1D();
    }

    public void Dispose()
    {
        Accelerator.Dispose();
        Context.Dispose();
    }
}

/// <summary>A fact that needs a CUDA device: skipped, with the reason shown, where there is none.</summary>
public sealed class CudaFactAttribute : FactAttribute
{
    public CudaFactAttribute()
    {
        if (CudaProbe.Reason is { } reason)
        {
            Skip = "no CUDA device: " + reason;
        }
    }
}

internal static class CudaProbe
{
    private static readonly Lazy<string?> Probe = new(() =>
    {
        try
        {
            using var context = Context.Create(b => b.Cuda());
            return context.GetCudaDevices().Count > 0 ? null : "ILGPU found no CUDA device (no NVIDIA driver or GPU on this machine)";
        }
        catch (Exception e)
        {
            return $"{e.GetType().Name}: {e.Message}";
        }
    });

    /// <summary>Null when a CUDA device is present, else why not.</summary>
    public static string? Reason => Probe.Value;
}

/// <summary>Tolerances shared by the GPU tests of the LoRA family (LoraMatmul, QLoraMatmul, LoraBranch).</summary>
internal static class GpuTolerance
{
    /// <summary>
    /// As LoraMatmulTests: an output that is a sum of K fp32 products is reordered by the GPU GEMM;
    /// 4·K·2⁻²⁴·max(1, max|ref|) bounds that with margin and stays far below one wrong product.
    /// </summary>
    public static double LoraAtol(int k, double[] reference) =>
        4.0 * Math.Max(k, 16) * Math.Pow(2, -24) * Math.Max(1.0, reference.Max(Math.Abs));
}
