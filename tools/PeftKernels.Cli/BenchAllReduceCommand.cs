// `mpirun.mpich -np N peft bench allreduce`: times the data-parallel all-reduce (MpiAllReduce: an
// MPI_Allgather of every rank's vector, then the rank-order sum) on float vectors of several sizes,
// the sizes of adapters' gradients (LoRA r 16 on every linear layer of the ~125M Llama: 2.8 M floats, 10.7 MiB).
// Per size: the median of repeated calls after a warm-up, and the rate bytes / time (the vector's
// size over the time one all-reduce takes, "algorithm bandwidth"). Rank 0 prints; every rank runs
// the same calls. Without a launcher it runs on one rank (a copy-and-sum, no communication).
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using PeftKernels.Distributed;

namespace PeftKernels.Cli;

internal static class BenchAllReduceCommand
{
    public static Command Create()
    {
        var sizes = new Option<int[]>("--kib") { Description = "Vector sizes in KiB (default 64, 1024, 10944, 16384).", AllowMultipleArgumentsPerToken = true };
        var repeats = new Option<int>("--repeats") { Description = "Timed calls per size (median).", DefaultValueFactory = _ => 30 };
        var command = new Command("allreduce", "Time the data-parallel all-reduce over MPI (start with mpirun.mpich -np N): median time and bytes/s per vector size.")
        {
            sizes,
            repeats,
        };
        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            int count = parse.AtLeast(repeats, 1);
            int[] kib = parse.GetValue(sizes) is { Length: > 0 } given ? given : [64, 1024, 10944, 16384];
            if (kib.Any(k => k < 1))
            {
                throw new ArgumentException($"--kib sizes must be at least 1; got {string.Join(' ', kib)}.");
            }

            using var group = MpiAllReduce.Start(TimeSpan.FromSeconds(120));
            var output = group.Rank == 0 ? log : TextWriter.Null;
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"all-reduce over {group.Size} rank(s) ({group.Library}), {count} calls per size (median)"));
            output.WriteLine($"{"size",10} {"ms",9} {"MB/s",9}");
            foreach (int k in kib)
            {
                var values = new float[k * 1024 / sizeof(float)];
                var times = new double[count];
                for (int i = -3; i < count; i++)
                {
                    values.AsSpan().Fill(group.Rank + 1);
                    group.Barrier();
                    long start = Stopwatch.GetTimestamp();
                    group.AllReduceSum(values);
                    if (i >= 0)
                    {
                        times[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                    }
                }

                float expected = group.Size * (group.Size + 1) / 2f;
                if (values[0] != expected || values[^1] != expected)
                {
                    throw new InvalidOperationException($"all-reduce returned {values[0]} where the sum of the ranks' values is {expected}.");
                }

                Array.Sort(times);
                double ms = times[count / 2];
                output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{k + " KiB",10} {ms,9:F3} {k * 1024 / 1e6 / (ms / 1e3),9:F0}"));
            }

            return 0;
        }));
        return command;
    }
}
