// The tiny Llama, LoRA config and adapter fixtures that the tests and the GPU runner's model checks
// share (the runner links this file in, since it cannot reference the test project): a config whose
// random weights are large enough (std 0.3) that attention and the MLP do real work, one-layer
// variants with randomized LoRA / DoRA / IA³ adapters, and a loss + gradients run on a device.
using PeftKernels;
using PeftKernels.Models;
using PeftKernels.Nn;
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

    /// <summary>The token inputs and next-token labels of <see cref="LossAndGrads"/>.</summary>
    public static readonly int[] Inputs = [1, 7, 3, 39, 12, 5];

    /// <summary>See <see cref="Inputs"/>.</summary>
    public static readonly int[] Labels = [7, 3, 39, 12, 5, 2];

    /// <summary><paramref name="count"/> values U(−range, range) from System.Random(<paramref name="seed"/>).</summary>
    public static float[] Uniform(int count, int seed, float range = 1f)
    {
        var rng = new Random(seed);
        var data = new float[count];
        for (int i = 0; i < count; i++)
        {
            data[i] = (float)((rng.NextDouble() * 2) - 1) * range;
        }

        return data;
    }

    /// <summary>The tiny Llama (HeadDim 16) with one decoder layer: the simulated accelerator is slow.</summary>
    public static LlamaForCausalLM OneLayer() => Model(LlamaConfig.Tiny(40) with { HeadDim = 16, NumHiddenLayers = 1 });

    /// <summary>Random B (and lora_B bias, and embedding A) so every adapter changes the output.</summary>
    public static void Randomize(Module model, string adapter, int seed)
    {
        foreach (var (module, a) in PeftKernels.Peft.Lora.Adapters(model, adapter))
        {
            var target = module.EndsWith("embed_tokens", StringComparison.Ordinal) ? a.A : a.B;
            Uniform(target.Data.Length, seed++, 0.5f).CopyTo(target.Data, 0);
            if (a.Bias != null)
            {
                Uniform(a.Bias.Data.Length, seed++).CopyTo(a.Bias.Data, 0);
            }
        }
    }

    /// <summary>
    /// DoRA on q_proj and down_proj (r 4), B random and m = norm·(1 + U(−0.3, 0.3)) so that m / norm ≠ 1;
    /// with <paramref name="withLora"/> also a plain LoRA adapter "b" on q_proj and v_proj (r 2), active beside it.
    /// </summary>
    public static LlamaForCausalLM Dora(bool quantized, bool withLora = false)
    {
        var model = OneLayer();
        if (quantized)
        {
            model.QuantizeLinears();
        }

        var peft = new PeftModel(model, Lora("q_proj,down_proj") with { UseDora = true });
        Randomize(model, "default", 5);
        if (withLora)
        {
            peft.AddAdapter("b", Lora("q_proj,v_proj", r: 2), seed: 7);
            Randomize(model, "b", 8);
            peft.SetAdapter("default", "b");
        }

        int seed = 11;
        foreach (var (module, a) in PeftKernels.Peft.Lora.Adapters(model, "default"))
        {
            var linear = (Linear)model.NamedModules().First(m => m.Name == module).Module;
            var norms = linear.WeightNorms(a);
            var noise = Uniform(norms.Length, seed++, 0.3f);
            for (int o = 0; o < norms.Length; o++)
            {
                a.Magnitude!.Data[o] = norms[o] * (1 + noise[o]);
            }
        }

        return model;
    }

    /// <summary>IA³ on PEFT's Llama defaults (k_proj, v_proj: output scaling; down_proj: input scaling), l = 1 + U(−0.3, 0.3).</summary>
    public static LlamaForCausalLM Ia3()
    {
        var model = OneLayer();
        new PeftModel(model).AddAdapter("default", new Ia3Config());
        int seed = 3;
        foreach (var adapter in model.NamedModules().Select(m => m.Module).OfType<Linear>().SelectMany(l => l.Ia3Adapters))
        {
            var noise = Uniform(adapter.Features, seed++, 0.3f);
            for (int i = 0; i < noise.Length; i++)
            {
                adapter.L.Data[i] = 1 + noise[i];
            }
        }

        return model;
    }

    /// <summary>LoRA adapters "a" (q, v, down; r 4) and "b" (all linear layers, r 2) on <see cref="OneLayer"/>, both randomized; "a" active.</summary>
    public static (LlamaForCausalLM Model, PeftModel Peft) TwoAdapters(double dropout = 0)
    {
        var model = OneLayer();
        var peft = new PeftModel(model, Lora("q_proj,v_proj,down_proj") with { LoraDropout = dropout }, "a");
        peft.AddAdapter("b", Lora("all-linear", r: 2) with { LoraDropout = dropout }, seed: 3);
        Randomize(model, "a", 4);
        Randomize(model, "b", 5);
        return (model, peft);
    }

    /// <summary>The loss on Inputs → Labels and the gradients of the trainable parameters (empty when one got none), computed on <paramref name="device"/>.</summary>
    public static (float Loss, float[][] Grads) LossAndGrads(LlamaForCausalLM model, Device device)
    {
        model.To(device);
        try
        {
            var loss = model.Loss(Inputs, Labels);
            float value = loss.Item();
            loss.Backward();
            return (value, [.. model.NamedParameters().Where(p => p.Parameter.Trainable).Select(p => p.Parameter.Grad ?? [])]);
        }
        finally
        {
            model.To(Device.Cpu);
        }
    }
}
