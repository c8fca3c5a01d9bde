using System.Reflection;
using System.Text.RegularExpressions;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using PeftKernels.Kernels.Gpu;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// Every GPU kernel compiles to PTX for sm_90 with ILGPU's PTX backend (no GPU needed). ILGPU 1.5.3
/// writes ".target sm_80" for any architecture ≥ 8.0 (PTX is forward-compatible: the driver JITs it
/// for sm_90). The PTX is not assembled here (no ptxas); the GPU runner loads it on a real device.
/// </summary>
public partial class GpuPtxTests
{
    /// <summary>The static shared memory one block may declare without an opt-in (48 KiB).</summary>
    private const int MaxStaticShared = 48 * 1024;

    private static readonly Lazy<Dictionary<string, string>> Ptx = new(CompileAll);

    public static TheoryData<string> Kernels()
    {
        var data = new TheoryData<string>();
        foreach (var entry in GpuKernelCatalog.All)
        {
            data.Add(entry.Name);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void CompilesToPtxForSm90(string name)
    {
        string ptx = Ptx.Value[name];
        Assert.Contains(".visible .entry", ptx);
        Assert.Matches(@"\.target sm_(80|90)", ptx);
        int shared = SharedBytes(ptx);
        Assert.True(shared <= MaxStaticShared, $"{name} declares {shared} bytes of static shared memory (> {MaxStaticShared}).");
    }

    [Fact]
    public void EveryKernelEntryPointIsInTheCatalog()
    {
        var listed = GpuKernelCatalog.All.Select(e => e.Method.IsGenericMethod ? e.Method.GetGenericMethodDefinition() : e.Method).ToHashSet();
        var entryPoints = typeof(GemmKernels).Assembly.GetTypes()
            .SelectMany(t => t.GetMethods(BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            .Where(m => m.Name.EndsWith("Kernel", StringComparison.Ordinal) && m.ReturnType == typeof(void))
            .ToList();
        Assert.NotEmpty(entryPoints);
        Assert.All(entryPoints, m => Assert.True(listed.Contains(m), $"{m.DeclaringType!.Name}.{m.Name} is not in GpuKernelCatalog"));
    }

    [Fact]
    public void TensorCoreKernelEmitsMmaSync()
    {
        foreach (var (name, ptx) in Ptx.Value.Where(p => p.Key.StartsWith("GemmTensorCore.Kernel", StringComparison.Ordinal)))
        {
            Assert.Contains("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", ptx);
            Assert.Contains("cvt.rna.tf32.f32", ptx);

            // A and B slices only, 2 · 128 · 20 floats (the emulation scratch is in EmulatedKernel only).
            Assert.True(SharedBytes(ptx) <= 2 * 128 * 20 * 4, $"{name}: {SharedBytes(ptx)} bytes of shared memory");
        }
    }

    /// <summary>The CPU AdamW promises IEEE-rounded operations without FMA; the GPU step must not contract either.</summary>
    [Fact]
    public void AdamWStepHasNoFusedMultiplyAdd()
    {
        string ptx = Ptx.Value[$"{nameof(AdamWKernels)}.{nameof(AdamWKernels.StepKernel)}"];
        Assert.Contains("mul.rn.f32", ptx);
        Assert.Contains("sqrt.rn.f32", ptx);
        Assert.DoesNotContain("fma.", ptx);
        Assert.DoesNotContain(".approx", ptx);
    }

    private static int SharedBytes(string ptx) =>
        SharedDecl().Matches(ptx).Sum(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture));

    [GeneratedRegex(@"\.shared\s+\.align\s+\d+\s+\.b8\s+\S+\[(\d+)\]")]
    private static partial Regex SharedDecl();

    private static Dictionary<string, string> CompileAll()
    {
        using var context = Context.Create(b => b.EnableAlgorithms());
        using var backend = new PTXBackend(context, CudaArchitecture.SM_90, CudaInstructionSet.ISA_80, null!);
        var result = new Dictionary<string, string>();
        foreach (var entry in GpuKernelCatalog.All)
        {
            var description = entry.ImplicitlyGrouped
                ? EntryPointDescription.FromImplicitlyGroupedKernel(entry.Method)
                : EntryPointDescription.FromExplicitlyGroupedKernel(entry.Method);
            var kernel = (PTXCompiledKernel)backend.Compile(description, KernelSpecialization.Empty);
            result[entry.Name] = kernel.PTXAssembly;
        }

        return result;
    }
}
