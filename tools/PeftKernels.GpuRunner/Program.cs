// GPU runner: on a host with an NVIDIA GPU, checks every GPU kernel on the CUDA accelerator against
// the CPU kernels at moderate shapes, then the tiny Llama on the CUDA device against the CPU device
// (logits, training steps of every method, several adapters, generation), then benchmarks the GPU
// kernels (against cuBLAS where the host has it), and writes results.json and results.md into the
// output folder.
//   PeftKernels.GpuRunner <out-dir> [--runs N] [--checks-only] [--bench-only]
//   PeftKernels.GpuRunner <out-dir> --cpu-accelerator
// --cpu-accelerator (for a machine without a GPU): the same run on ILGPU's CPU accelerator (simulated
// threads): the model and device checks, then every benchmark at GpuBenchSizes.Small (no cuBLAS), to
// verify the logic, tolerances and counters; its timings say nothing about a GPU. Minutes.
// Exit codes: 0 all checks passed, 1 a check failed (or the run broke), 2 no CUDA device, 64 bad arguments.
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using PeftKernels.Bench.Gpu;
using PeftKernels.GpuRunner;

const string Usage = "usage: PeftKernels.GpuRunner <out-dir> [--runs N] [--checks-only] [--bench-only] [--cpu-accelerator]";
string? outDir = null;
int runs = 10;
bool checks = true, bench = true, cpuAccelerator = false;
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
        case "--cpu-accelerator":
            cpuAccelerator = true;
            break;
        case "-h" or "--help":
            Console.WriteLine(Usage);
            return 0;
        default:
            if (outDir == null && !args[i].StartsWith('-'))
            {
                outDir = args[i];
                break;
            }

            Console.Error.WriteLine($"unknown argument '{args[i]}'; {Usage}");
            return 64;
    }
}

if (outDir == null)
{
    Console.Error.WriteLine(Usage);
    return 64;
}

if (cpuAccelerator)
{
    // 32 threads per warp as on CUDA (the warp-shuffle kernels assume it), 8 warps per group, 1 multiprocessor.
    using var cpuContext = Context.Create(b => b.CPU(new CPUDevice(32, 8, 1)).EnableAlgorithms());
    using var cpu = cpuContext.CreateCPUAccelerator(0);
    var cpuReport = new Report($"ILGPU CPU accelerator ({cpu.Name}): code paths only, small sizes", runs);
    Console.WriteLine($"device: {cpuReport.Device}");
    if (checks)
    {
        ModelChecks.RunAll(cpu, cpuReport);
    }

    if (bench)
    {
        Benchmarks.RunAll(cpu, cpuReport, Math.Min(runs, 3), GpuBenchSizes.Small);
    }

    return Finish(cpuReport, outDir);
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
            ModelChecks.RunAll(accelerator, report);
        }

        if (bench)
        {
            Benchmarks.RunAll(accelerator, report, runs, GpuBenchSizes.Full);
        }
    }
    catch (Exception e)
    {
        report.Notes.Add($"the run stopped: {e.GetType().Name}: {e.Message}");
        Console.Error.WriteLine(e);
        report.Write(outDir);
        return 1;
    }

    return Finish(report, outDir);
}

static int Finish(Report report, string outDir)
{
    report.Write(outDir);
    Console.WriteLine($"results: {Path.Combine(outDir, "results.json")}, {Path.Combine(outDir, "results.md")}");
    int failed = report.Checks.Count(c => !c.Pass);
    Console.WriteLine($"checks: {report.Checks.Count - failed} passed, {failed} failed");
    return failed == 0 ? 0 : 1;
}
