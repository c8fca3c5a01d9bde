// The tiny Llama and LoRA config that the tests and the GPU runner's model checks share (the runner
// links this file in, since it cannot reference the test project): a config whose random weights are
// large enough (std 0.3) that attention and the MLP do real work.
using PeftKernels.Models;
using PeftKernels.Peft;

namespace PeftKernels.Testing;

internal static class TinyLlama
{
    /// <summary>Every weight but the norms ×<paramref name="scale"/>; zeros (biases) set to 0.01·(i mod 7).</summary>
    public static LlamaForCausalLM Model(LlamaConfig? config = null, int seed = 1, float scale = 15f)
    {
        var model = LlamaForCausalLM.Create(config ?? LlamaConfig.Tiny(40) with { HeadDim = 16 }, seed);
        foreach (var (name, p) in model.NamedParameters())
        {
            if (!name.EndsWith("norm.weight", StringComparison.Ordinal))
            {
                var d = p.Data;
                for (int i = 0; i < d.Length; i++)
                {
                    d[i] = d[i] == 0 ? 0.01f * (i % 7) : d[i] * scale;
                }
            }
        }

        return model;
    }

    /// <summary>LoRA of rank <paramref name="r"/> and alpha <paramref name="alpha"/> on <paramref name="targets"/> (TargetModules.Parse).</summary>
    public static LoraConfig Lora(string targets, int r = 4, double alpha = 8) =>
        new() { R = r, LoraAlpha = alpha, TargetModules = TargetModules.Parse(targets) };
}
