// Entry point. Before BenchmarkDotNet runs, the same process measures this machine's limits
// (MachineProbe): fp32 FMA peak (GFLOP/s, 1 and 2 threads) and read bandwidth (GB/s, 64 MiB
// and 1 GiB buffers, 1 and 2 threads), so the GFLOP/s and GB/s columns of every table can be
// read as a fraction of them. Default job: 1 launch, 3 warmups, 7 iterations (a 2048×4096×4096
// op takes ~0.5–1 s; the whole suite runs in well under 15 minutes on 2 cores). `--job X` (-j X)
// replaces it; options such as --iterationCount adjust it.
using System.Globalization;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length == 2 && Is(args[0], "--llama-memory"))
        {
            return LlamaMemory.Run(args[1]);
        }

        IConfig config = DefaultConfig.Instance
            .AddColumn(StatisticColumn.Median, ThroughputColumn.GFlops, ThroughputColumn.GBs);

        // A default job in the global config takes precedence over --job, so add it only when no job is named.
        if (!args.Any(a => Is(a, "-j") || Is(a, "--job") || a.StartsWith("--job=", StringComparison.OrdinalIgnoreCase)))
        {
            config = config.AddJob(Job.Default.WithLaunchCount(1).WithWarmupCount(3).WithIterationCount(7).AsDefault());
        }

        if (!args.Any(a => Is(a, "--list") || Is(a, "--help") || Is(a, "-h") || Is(a, "-?") || Is(a, "--version") || Is(a, "--info")))
        {
            PrintMachineLimits();
        }

        var summaries = BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args, config).ToList();
        bool failed = summaries.Any(s => s.HasCriticalValidationErrors || s.Reports.Any(r => !r.Success));
        return failed ? 1 : 0;
    }

    private static bool Is(string arg, string option) => string.Equals(arg, option, StringComparison.OrdinalIgnoreCase);

    private static void PrintMachineLimits()
    {
        var inv = CultureInfo.InvariantCulture;
        Console.WriteLine($"// Machine limits (MachineProbe, SIMD path {KernelOptions.Best}, {Environment.ProcessorCount} logical CPUs):");
        foreach (int threads in new[] { 1, 2 })
        {
            Console.WriteLine(string.Format(inv, "//   FMA peak,                {0} thread(s): {1,7:F1} GFLOP/s", threads, MachineProbe.FmaPeakGflops(threads)));
        }

        foreach (var (label, bytes) in new[] { ("64 MiB", 64L << 20), ("1 GiB", 1L << 30) })
        {
            foreach (int threads in new[] { 1, 2 })
            {
                double gbs = MachineProbe.ReadBandwidthGBs(threads, bytes);
                Console.WriteLine(string.Format(inv, "//   Read bandwidth, {0,-6}   {1} thread(s): {2,7:F1} GB/s", label, threads, gbs));
            }
        }

        Console.WriteLine();
    }
}
