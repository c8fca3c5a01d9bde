using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Nn;

/// <summary>Per-call settings threaded through a model's forward pass.</summary>
/// <param name="DropoutSeed">Seed of this step's dropout masks (each adapter mixes in its own seed).</param>
/// <param name="Kernel">Threads and SIMD path of the kernels.</param>
public sealed record ForwardContext(ulong DropoutSeed = 0, KernelOptions Kernel = default)
{
    /// <summary>The adapter name that selects no adapter in <see cref="AdapterNames"/> (PEFT's "__base__").</summary>
    public const string BaseAdapterName = "__base__";

    /// <summary>Defaults: seed 0, all processors, best SIMD path.</summary>
    public static ForwardContext Default { get; } = new();

    /// <summary>
    /// Per-row adapter selection: one adapter name per batch row (sequence), <see cref="BaseAdapterName"/> for none.
    /// Null (the default): every row uses the layer's active adapters.
    /// </summary>
    public IReadOnlyList<string>? AdapterNames { get; init; }

    /// <summary>splitmix64 of (a, b): a well-mixed seed for one adapter at one step.</summary>
    public static ulong Mix(ulong a, ulong b)
    {
        ulong z = a + (b * 0x9E3779B97F4A7C15UL) + 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
