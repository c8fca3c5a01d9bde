// Model-level checks: the tiny Llama of the unit tests (vocab 40, hidden 64, 2 layers of 4 heads
// of 16, 2 kv heads, intermediate 176; weights ×15 so the logits spread) on the accelerator's
// Device against the same model on the CPU device, through the public API only. They cover what
// the [CudaFact] tests of tests/Device*Tests.cs check, since those are not in the bundle:
// logits (fp32; NF4 + LoRA through the tiled and the GEMV paths), the loss and the gradients of
// LoRA, QLoRA, DoRA (fp32 and NF4 base) and IA³, two Trainer steps of LoRA, QLoRA, DoRA, IA³ and
// full fine-tuning (ModelChecks.Training.cs), two LoRA adapters (both active
// with dropout: loss and gradients; a per-row batch: logits), greedy and seeded generation, and
// KV-cache decoding (prefill + single-token steps at batch 2) against the CPU's full forward, and the
// inference engine on the device against the engine on the CPU (ModelChecks.Engine.cs).
// Pass/fail: |device − cpu| ≤ atol + rtol·|cpu| with the tolerances of those tests: fp32 on both
// sides in another summation order through ≤ 2 layers of dots of ≤ 176 terms, 1e-4 relative plus
// 1e-4 of the tensor's (or logits') largest magnitude for entries that nearly cancel.
using ILGPU.Runtime;
using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;

using PeftKernels.Testing;

namespace PeftKernels.GpuRunner;

internal static partial class ModelChecks
{
    private const string Tiny = "tiny Llama";

    public static void RunAll(Accelerator acc, Report report)
    {
        var device = Device.FromAccelerator(acc);
        var checks = new (string Name, Action Run)[]
        {
            ("model logits", () => LogitsCheck(device, report)),
            ("model LoRA training", () => LoraTraining(device, report, quantized: false)),
            ("model QLoRA training", () => LoraTraining(device, report, quantized: true)),
            ("model DoRA training", () => AdapterTraining(device, report, "DoRA", () => TinyLlama.Dora(quantized: false), gradients: 6)), // q, down × (A, B, m)
            ("model DoRA NF4 gradients", () => SameGradients(report, "DoRA (NF4 base)", TinyLlama.LossAndGrads(TinyLlama.Dora(true), Device.Cpu), TinyLlama.LossAndGrads(TinyLlama.Dora(true), device), 6)),
            ("model IA³ training", () => AdapterTraining(device, report, "IA³", TinyLlama.Ia3, gradients: 3)),
            ("model full fine-tuning", () => FullTraining(device, report)),
            ("model two adapters", () => TwoAdapterChecks(device, report)),
            ("model generation", () => GenerationChecks(device, report)),
            ("device counters", () => CounterChecks(device, report)),
            ("model round-2 methods", () => Round2Checks(device, report)),
            ("model inference engine", () => EngineChecks(device, report)),
        };
        foreach (var (name, run) in checks)
        {
            try
            {
                run();
            }
            catch (Exception e)
            {
                report.Add(new CheckResult(name, Tiny, double.NaN, double.NaN, 0, 0, false, $"threw {e.GetType().Name}: {e.Message}"));
            }
        }
    }

    /// <summary>The Qwen2-like tiny model (q/k/v biases), optionally NF4 with a randomized LoRA adapter on every Linear (DeviceTests.Model).</summary>
    private static LlamaForCausalLM Qwen2Like(bool quantizedWithLora)
    {
        var model = TinyLlama.Model(LlamaConfig.Tiny(40) with { ModelType = "qwen2", AttentionBias = true, HeadDim = 16 });
        if (quantizedWithLora)
        {
            model.QuantizeLinears();
            Lora.Apply(model, TinyLlama.Lora("all-linear"), seed: 2);
            TinyLlama.Randomize(model, "default", 5);
        }

        return model;
    }

    private static float[] Logits(LlamaForCausalLM model, Device device, int[] tokens, int batch = 1)
    {
        model.To(device);
        try
        {
            using var scope = Tape.NoGrad();
            return model.Forward(tokens, batch).Data;
        }
        finally
        {
            model.To(Device.Cpu);
        }
    }

    private static void LogitsCheck(Device device, Report report)
    {
        int[] tokens = [1, 7, 3, 39, 12];
        foreach (bool nf4 in new[] { false, true })
        {
            var model = Qwen2Like(nf4);
            string what = nf4 ? "NF4 + LoRA r4 all-linear" : "fp32";

            // 5 tokens take the tiled GEMMs, 3 tokens the 4-bit GEMV (n ≤ 4); batch 2 × 4 tokens the per-row RoPE and attention.
            foreach (var (input, batch) in new[] { (tokens, 1), (tokens[..3], 1), ([.. tokens[..4], .. tokens[..4]], 2) })
            {
                var cpu = Logits(model, Device.Cpu, input, batch);
                var gpu = Logits(model, device, input, batch);
                Close(report, $"model logits ({what})", $"{Tiny} qwen2, batch {batch} × {input.Length / batch}", [(gpu, cpu, 1e-4 * MaxAbs(cpu))], 1e-4,
                    "atol 1e-4 of the logit range");
            }
        }
    }

    private static void GenerationChecks(Device device, Report report)
    {
        var model = Qwen2Like(quantizedWithLora: false);
        var sampling = new GenerationOptions(Temperature: 1.3f, TopP: 0.9f, Seed: 11);
        int[] prompt = [1, 7, 3];
        var cpuGreedy = model.Generate(prompt, 8);
        var cpuSampled = model.Generate(prompt, 8, sampling);
        model.To(device);
        int[] gpuGreedy, gpuSampled;
        try
        {
            gpuGreedy = model.Generate(prompt, 8);
            gpuSampled = model.Generate(prompt, 8, sampling);
        }
        finally
        {
            model.To(Device.Cpu);
        }

        // Logits agree to ~1e-4 relative; no argmax or top-p boundary of these runs lies that close (as DeviceGenerationTests).
        Same(report, "greedy generation tokens", $"{Tiny} qwen2, prompt 3 + 8", gpuGreedy, cpuGreedy);
        Same(report, "seeded sampling tokens (T 1.3, top-p 0.9)", $"{Tiny} qwen2, prompt 3 + 8", gpuSampled, cpuSampled);
        foreach (bool nf4 in new[] { false, true })
        {
            CachedDecoding(device, report, Qwen2Like(nf4), nf4 ? "NF4 + LoRA" : "fp32");
        }
    }

    /// <summary>Batch 2, a 4-token prefill into the device cache, then 2 single-token steps, against the CPU's full forward of 6 tokens.</summary>
    private static void CachedDecoding(Device device, Report report, LlamaForCausalLM model, string what)
    {
        int[] tokens = [1, 7, 3, 39, 12, 5, 30, 4, 9, 9, 1, 17];
        const int t = 6, prompt = 4;
        int vocab = model.Config.VocabSize;
        var full = Logits(model, Device.Cpu, tokens, 2);
        double atol = 1e-4 * MaxAbs(full);
        var pieces = new List<(float[], float[], double)>();
        model.To(device);
        try
        {
            using var scope = Tape.NoGrad();
            using var cache = model.CreateCache(capacity: 8, batch: 2);
            var prefill = model.Forward([.. tokens[..prompt], .. tokens[t..(t + prompt)]], 2, cache).Data;
            for (int b = 0; b < 2; b++)
            {
                pieces.Add((prefill[(b * prompt * vocab)..((b + 1) * prompt * vocab)], full[(b * t * vocab)..(((b * t) + prompt) * vocab)], atol));
            }

            for (int i = prompt; i < t; i++)
            {
                var step = model.Forward([tokens[i], tokens[t + i]], 2, cache).Data;
                for (int b = 0; b < 2; b++)
                {
                    int at = ((b * t) + i) * vocab;
                    pieces.Add((step[(b * vocab)..((b + 1) * vocab)], full[at..(at + vocab)], atol));
                }
            }

            if (cache.Length != t)
            {
                throw new InvalidOperationException($"the cache holds {cache.Length} positions after the steps; expected {t}.");
            }
        }
        finally
        {
            model.To(Device.Cpu);
        }

        Close(report, $"KV-cache decoding logits ({what}) vs CPU full forward", $"{Tiny} qwen2, batch 2, prefill {prompt} + {t - prompt} steps", pieces, 1e-4,
            "atol 1e-4 of the logit range");
    }

    private static void TwoAdapterChecks(Device device, Report report)
    {
        // Both adapters active with dropout 0.25 in training mode: the branch masks must be the CPU's (seeded by storage index).
        (float Loss, float[][] Grads) Run(Device on)
        {
            var (model, peft) = TinyLlama.TwoAdapters(dropout: 0.25);
            peft.SetAdapter("a", "b");
            model.Train();
            return TinyLlama.LossAndGrads(model, on);
        }

        SameGradients(report, "two active LoRA adapters, dropout 0.25", Run(Device.Cpu), Run(device), atLeast: 20);

        var (model, peft) = TinyLlama.TwoAdapters(dropout: 0);
        string[] names = ["b", ForwardContext.BaseAdapterName, "a"];
        const int T = 4;
        int[] tokens = [.. Enumerable.Range(0, names.Length * T).Select(i => (i * 7) % 40)];
        float[] PerRow(Device on)
        {
            model.To(on);
            try
            {
                using var scope = Tape.NoGrad();
                return peft.Forward(tokens, names.Length, names).Data;
            }
            finally
            {
                model.To(Device.Cpu);
            }
        }

        var cpu = PerRow(Device.Cpu);
        var gpu = PerRow(device);
        int rowFloats = T * 40;
        var pieces = Enumerable.Range(0, names.Length).Select(s =>
        {
            var expected = cpu[(s * rowFloats)..((s + 1) * rowFloats)];
            return (gpu[(s * rowFloats)..((s + 1) * rowFloats)], expected, 1e-4 * MaxAbs(expected));
        }).ToList();
        bool distinct = !cpu.AsSpan(0, rowFloats).SequenceEqual(cpu.AsSpan(2 * rowFloats, rowFloats));
        Close(report, "per-row adapter batch logits (b, __base__, a)", $"{Tiny} 1 layer, batch 3 × {T}", pieces, 1e-4,
            "atol 1e-4 of each sequence's logit range" + (distinct ? "" : "; FAIL: adapters a and b give the same CPU logits"), distinct);
    }

    private static void SameGradients(Report report, string what, (float Loss, float[][] Grads) cpu, (float Loss, float[][] Grads) gpu, int atLeast)
    {
        Close(report, $"{what}: loss", Tiny, [([gpu.Loss], [cpu.Loss], 0)], 1e-4, "");
        int nonZero = cpu.Grads.Count(g => g.Any(v => v != 0));
        bool shapes = cpu.Grads.Length == gpu.Grads.Length;
        var pieces = shapes ? cpu.Grads.Zip(gpu.Grads, (c, g) => (g, c, 1e-4 * MaxAbs(c))).ToList() : [];
        Close(report, $"{what}: gradients", $"{Tiny}, {cpu.Grads.Length} tensors", pieces, 1e-4,
            $"atol 1e-4 of each tensor's largest; {nonZero} non-zero (≥ {atLeast} required)" + (shapes ? "" : $"; FAIL: {gpu.Grads.Length} device tensors"),
            shapes && nonZero >= atLeast);
    }

    private static double MaxAbs(float[] values) => values.Length == 0 ? 0 : values.Max(MathF.Abs);

    private static void Same(Report report, string name, string shape, int[] gpu, int[] cpu)
    {
        bool pass = gpu.SequenceEqual(cpu);
        report.Add(new CheckResult(name, shape, pass ? 0 : 1, pass ? 0 : 1, 0, 0, pass,
            pass ? $"(equal: {string.Join(' ', cpu)})" : $"device [{string.Join(' ', gpu)}] vs cpu [{string.Join(' ', cpu)}]"));
    }

    /// <summary>One check over several (device, cpu, atol) pieces: every element within its piece's atol + rtol·|cpu|, and <paramref name="extra"/>.</summary>
    private static void Close(Report report, string name, string shape, IReadOnlyList<(float[] Device, float[] Cpu, double Atol)> pieces, double rtol, string note,
        bool extra = true)
    {
        double maxAbs = 0, maxRel = 0, maxAtol = 0;
        bool pass = extra && pieces.Count > 0;
        foreach (var (gpu, cpu, atol) in pieces)
        {
            pass &= gpu.Length == cpu.Length;
            maxAtol = Math.Max(maxAtol, atol);
            for (int i = 0; i < Math.Min(gpu.Length, cpu.Length); i++)
            {
                double diff = float.IsFinite(gpu[i]) ? Math.Abs((double)gpu[i] - cpu[i]) : double.PositiveInfinity;
                maxAbs = Math.Max(maxAbs, diff);
                maxRel = Math.Max(maxRel, diff / Math.Max(Math.Abs((double)cpu[i]), 1e-30));
                pass &= diff <= atol + (rtol * Math.Abs(cpu[i]));
            }
        }

        report.Add(new CheckResult(name, shape, maxAbs, maxRel, maxAtol, rtol, pass, note));
    }
}
