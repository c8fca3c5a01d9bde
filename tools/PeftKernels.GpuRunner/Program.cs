// GPU runner: on a host with an NVIDIA GPU, checks every GPU kernel on the CUDA accelerator against
// the CPU kernels at moderate shapes, then benchmarks the GPU kernels (against cuBLAS where the
// host has it), and writes results.json and results.md into the output folder.
//   PeftKernels.GpuRunner <out-dir> [--runs N] [--checks-only] [--bench-only]
// Exit codes: 0 all checks passed, 1 a check failed (or the run broke), 2 no CUDA device, 64 bad arguments.
using ILGPU;
using ILGPU.Runtime.Cuda;
using PeftKernels.GpuRunner;

string? outDir = null;
int runs = 10;
bool checks = true, bench = true;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--runs" when i + 1 < args.Length && int.TryParse(args[i + 1], out int r) && r > 0:
            runs = r;
            i++;
            break;
        case "--checks-only":
            bench = false;
            break;
        case "--bench-only":
            checks = false;
            break;
        case "-h" or "--help":
            Console.WriteLine("usage: PeftKernels.GpuRunner <out-dir> [--runs N] [--checks-only] [--bench-only]");
            return 0;
        default:
            if (outDir == null && !args[i].StartsWith('-'))
            {
                outDir = args[i];
                break;
            }

            Console.Error.WriteLine($"unknown argument '{args[i]}'; usage: PeftKernels.GpuRunner <out-dir> [--runs N] [--checks-only] [--bench-only]");
            return 64;
    }
}

if (outDir == null)
{
    Console.Error.WriteLine("usage: PeftKernels.GpuRunner <out-dir> [--runs N] [--checks-only] [--bench-only]");
    return 64;
}

Context context;
try
{
    context = Context.Create(b => b.Cuda().EnableAlgorithms());
}
catch (Exception e)
{
    Console.WriteLine($"no CUDA device: the CUDA runtime could not be initialised ({e.GetType().Name}: {e.Message})");
    return 2;
}

using (context)
{
    if (context.GetCudaDevices().Count == 0)
    {
        Console.WriteLine("no CUDA device: ILGPU found no NVIDIA GPU (is the driver installed and /dev/nvidia* visible?)");
        return 2;
    }

    using var accelerator = context.CreateCudaAccelerator(0);
    var report = new Report(
        $"{accelerator.Name}, {accelerator.Architecture}, {accelerator.MemorySize / (1L << 30)} GiB, " +
        $"{accelerator.NumMultiprocessors} SMs, driver {accelerator.DriverVersion}", runs);
    Console.WriteLine($"device: {report.Device}");
    try
    {
        if (checks)
        {
            KernelChecks.RunAll(accelerator, report);
        }

        if (bench)
        {
            Benchmarks.RunAll(accelerator, report, runs);
        }
    }
    catch (Exception e)
    {
        report.Notes.Add($"the run stopped: {e.GetType().Name}: {e.Message}");
        Console.Error.WriteLine(e);
        report.Write(outDir);
        return 1;
    }

    report.Write(outDir);
    Console.WriteLine($"results: {Path.Combine(outDir, "results.json")}, {Path.Combine(outDir, "results.md")}");
    return report.Checks.All(c => c.Pass) ? 0 : 1;
}
