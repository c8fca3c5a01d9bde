// The inference engine on the accelerator against the engine on the CPU (what DeviceEngineTests check on
// ILGPU's CPU accelerator), through the public API: the tiny Llama with saved LoRA adapters of ranks 4
// (rsLoRA, lora bias) and 16, a DoRA and an IA³ adapter, base requests among them, prompts of different
// lengths prefilled in chunks under a small token budget (so steps mix prefill and decode rows), on an
// fp32 and an NF4 base. Pass: every request's greedy tokens are the CPU engine's (logits agree to ~1e-4
// relative; no argmax of these runs lies that close, as in the generation checks).
using PeftKernels.Engine;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Testing;

namespace PeftKernels.GpuRunner;

internal static partial class ModelChecks
{
    private static readonly string[] EngineAdapters = ["r4", "r16", "dora", "ia3"];

    /// <summary>The CPU engine and the device engine over the same requests; one check per base (fp32, NF4).</summary>
    private static void EngineChecks(Device device, Report report)
    {
        string root = Path.Combine(Path.GetTempPath(), "peft-gpu-engine-" + Environment.ProcessId);
        Directory.CreateDirectory(root);
        try
        {
            var owner = EngineModel(quantized: false);
            var peft = new PeftModel(owner);
            peft.AddAdapter("r4", TinyLlama.Lora("q_proj,v_proj,down_proj", r: 4) with { UseRsLora = true, LoraBias = true }, seed: 1);
            peft.AddAdapter("r16", TinyLlama.Lora("all-linear", r: 16), seed: 2);
            peft.AddAdapter("dora", TinyLlama.Lora("q_proj,o_proj,down_proj", r: 4) with { UseDora = true }, seed: 3);
            peft.AddAdapter("ia3", new Ia3Config(), seed: 4);
            TinyLlama.Randomize(owner, "r4", 10);
            TinyLlama.Randomize(owner, "r16", 11);
            TinyLlama.Randomize(owner, "dora", 12);
            foreach (var name in EngineAdapters)
            {
                peft.SaveAdapter(root, name);
            }

            string?[] mix = [null, "r4", "r16", "dora", "ia3", "r16", null];
            var requests = mix.Select((a, i) => new EngineRequest([.. Enumerable.Range(0, 2 + (i * 5 % 11)).Select(t => ((t * 7) + i) % 40)], a,
                new SamplingParams(MaxTokens: 6))).ToList();
            foreach (bool nf4 in new[] { false, true })
            {
                var cpu = RunEngine(EngineModel(nf4), root, requests);
                var model = EngineModel(nf4);
                model.To(device);
                var gpu = RunEngine(model, root, requests);
                Same(report, $"inference engine tokens ({(nf4 ? "NF4" : "fp32")} base)", $"{Tiny}, {requests.Count} requests, LoRA r4/r16, DoRA, IA³, base",
                    [.. gpu.SelectMany(r => r)], [.. cpu.SelectMany(r => r)]);
            }
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    private static LlamaForCausalLM EngineModel(bool quantized)
    {
        var model = TinyLlama.Model(LlamaConfig.Tiny(40) with { HeadDim = 16, MaxPositionEmbeddings = 128 });
        if (quantized)
        {
            model.QuantizeLinears();
        }

        return model;
    }

    private static List<int[]> RunEngine(LlamaForCausalLM model, string root, IReadOnlyList<EngineRequest> requests)
    {
        using var engine = new InferenceEngine(model, new EngineOptions { MaxBatchTokens = 8, MaxRunningSequences = 4, BlockSize = 4 });
        foreach (var name in EngineAdapters)
        {
            engine.Adapters.Load(name, Path.Combine(root, name));
        }

        return [.. engine.Run(requests).Select(r => r.Finish == FinishReason.Error ? [-1] : r.Tokens)];
    }
}
