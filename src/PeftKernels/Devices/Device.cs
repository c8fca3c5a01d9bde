// Where a tensor's storage lives: host memory (the CPU kernels) or an ILGPU accelerator (the
// GPU kernels; CUDA on a GPU host, the ILGPU CPU accelerator in tests). Device tensors keep
// their data on the accelerator; the host sees it only when it reads Tensor.Data, which
// downloads once. The CUDA device is created on first use and lives for the process.
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using PeftKernels.Kernels.Gpu;

namespace PeftKernels;

/// <summary>The kind of a <see cref="Device"/>.</summary>
public enum DeviceKind
{
    /// <summary>Host memory and the SIMD CPU kernels.</summary>
    Cpu,

    /// <summary>An ILGPU accelerator and the GPU kernels.</summary>
    Gpu,
}

/// <summary>A place tensors live and kernels run: the CPU, or an ILGPU accelerator.</summary>
public sealed class Device
{
    private static readonly Lazy<(Device? Device, string? Reason)> CudaProbe = new(CreateCuda);
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<Accelerator, Device> Wrapped = new();
    private readonly Accelerator? accelerator;

    private Device(DeviceKind kind, Accelerator? accelerator, string name)
    {
        Kind = kind;
        this.accelerator = accelerator;
        Name = name;
    }

    /// <summary>The host.</summary>
    public static Device Cpu { get; } = new(DeviceKind.Cpu, null, "cpu");

    /// <summary>CUDA when a CUDA device is present, else the CPU.</summary>
    public static Device Default => CudaProbe.Value.Device ?? Cpu;

    /// <summary>Why no CUDA device is available, or null when one is.</summary>
    public static string? CudaUnavailableReason => CudaProbe.Value.Reason;

    /// <summary>Cpu or Gpu.</summary>
    public DeviceKind Kind { get; }

    /// <summary>True for an accelerator.</summary>
    public bool IsGpu => Kind == DeviceKind.Gpu;

    /// <summary>"cpu", "cuda", or the accelerator's name.</summary>
    public string Name { get; }

    /// <summary>The accelerator; throws for the CPU device.</summary>
    public Accelerator Accelerator => accelerator ?? throw new InvalidOperationException("the CPU device has no accelerator.");

    /// <summary>The caching allocator of this device's accelerator (see <see cref="DeviceMemoryPool"/>); throws for the CPU.</summary>
    public DeviceMemoryPool MemoryPool => DeviceMemoryPool.Of(Accelerator);

    /// <summary>Host waits for this device so far (every one goes through <see cref="DeviceSync"/>); 0 for the CPU.</summary>
    public long Synchronizations => IsGpu ? DeviceSync.Count(Accelerator) : 0;

    /// <summary>The first CUDA device (created once per process).</summary>
    /// <exception cref="InvalidOperationException">No CUDA device is present; the message says why.</exception>
    public static Device Cuda() => CudaProbe.Value.Device
        ?? throw new InvalidOperationException($"no CUDA device is available ({CudaProbe.Value.Reason}); use the cpu device.");

    /// <summary>A device over an existing accelerator (not owned: the caller disposes it); the same accelerator gives the same device.</summary>
    public static Device FromAccelerator(Accelerator accelerator)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        return Wrapped.GetValue(accelerator, static a => new Device(DeviceKind.Gpu, a, a.Name));
    }

    /// <summary>"cpu" or "cuda" (case-insensitive).</summary>
    /// <exception cref="ArgumentException">Any other name.</exception>
    /// <exception cref="InvalidOperationException">"cuda" where no CUDA device is present.</exception>
    public static Device Parse(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return name.Trim().ToLowerInvariant() switch
        {
            "cpu" => Cpu,
            "cuda" or "gpu" => Cuda(),
            _ => throw new ArgumentException($"unknown device '{name}'; expected cpu or cuda.", nameof(name)),
        };
    }

    /// <inheritdoc/>
    public override string ToString() => Name;

    private static (Device?, string?) CreateCuda()
    {
        try
        {
            var context = Context.Create(b => b.Cuda().EnableAlgorithms());
            var devices = context.GetCudaDevices();
            if (devices.Count == 0)
            {
                context.Dispose();
                return (null, "ILGPU found no CUDA device");
            }

            var accelerator = devices[0].CreateCudaAccelerator(context);
            return (new Device(DeviceKind.Gpu, accelerator, "cuda"), null);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return (null, $"{e.GetType().Name}: {e.Message}");
        }
    }
}
