// `--llama-memory lora-f32|lora-bf16|qlora`: peak resident memory of LoRA / QLoRA training on
// the ~125M config at batch 1 × seq 256, in a process of its own (the figure is process-wide).
// Model construction (random fp32 weights, then conversion) is not part of the training
// footprint, so after it the kernel's peak-RSS counter is reset (Linux: "5" written to
// /proc/self/clear_refs resets VmHWM) and VmHWM is read after three training steps.
using System.Globalization;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Training;

namespace PeftKernels.Bench;

internal static class LlamaMemory
{
    public static int Run(string method)
    {
        string storage = method switch
        {
            "lora-f32" => "f32",
            "lora-bf16" => "bf16",
            "qlora" => "nf4",
            _ => throw new ArgumentException($"--llama-memory takes lora-f32, lora-bf16 or qlora; got '{method}'."),
        };
        var model = LlamaBenchModels.Create(storage);
        Lora.Apply(model, new LoraConfig { R = 16, LoraAlpha = 32, TargetModules = TargetModules.FromRegex(TargetModules.AllLinear) });
        var rng = new Random(1);
        int[] tokens = [.. Enumerable.Range(0, 257).Select(_ => rng.Next(32000))];
        var trainer = new Trainer(model, _ => (tokens[..256], tokens[1..]), 1, new TrainerOptions { Steps = 3, LearningRate = 1e-4 });
        // Aggressive: compact and give the freed setup memory (fp32 init, conversion) back to the OS.
        GC.Collect(2, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        long setup = Status("VmRSS");
        bool reset = TryResetPeak();
        trainer.Run();
        long peak = Status("VmHWM");
        var inv = CultureInfo.InvariantCulture;
        long weights = model.NamedParameters().Sum(p => p.Parameter.ByteSize);
        Console.WriteLine(string.Format(inv, "{0}: weights {1:F0} MiB, optimizer state {2:F1} MiB, RSS after setup {3:F0} MiB, peak RSS during 3 training steps {4:F0} MiB ({5}), losses {6}",
            method, weights / 1048576.0, trainer.Optimizer.StateBytes / 1048576.0, setup / 1024.0, peak / 1024.0,
            reset ? "VmHWM reset after setup" : "VmHWM NOT reset: includes setup", string.Join(" ", trainer.Losses.Select(l => l.ToString("F3", inv)))));
        return 0;
    }

    private static bool TryResetPeak()
    {
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>A kB field of /proc/self/status (Linux), or −1.</summary>
    private static long Status(string field)
    {
        if (!File.Exists("/proc/self/status"))
        {
            return -1;
        }

        var line = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith(field + ":", StringComparison.Ordinal));
        return line == null ? -1 : long.Parse(line.Split(':')[1].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
    }
}
