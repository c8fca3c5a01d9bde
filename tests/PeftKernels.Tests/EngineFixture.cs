// A tiny Llama (2 layers, GQA) with five saved adapters of every kind the engine serves, for the
// engine tests: LoRA of ranks 1, 8 (rsLoRA, lora bias) and 32, DoRA (m / norm ≠ 1) and IA³, each
// randomized so it changes the output. The reference model carries all five and is switched with
// SetAdapter; the engine's model is an identical fresh copy that loads the saved folders.
using PeftKernels.Autograd;
using PeftKernels.Engine;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using PeftKernels.Testing;

namespace PeftKernels.Tests;

internal sealed class EngineFixture : IDisposable
{
    public static readonly string[] AdapterNames = ["r1", "r8", "r32", "dora", "ia3"];

    private readonly TempFolder folder = new();

    public EngineFixture(bool quantized = false)
    {
        Quantized = quantized;
        Reference = NewModel();
        Peft = new PeftModel(Reference);
        Peft.AddAdapter("r1", TinyLlama.Lora("all-linear", r: 1, alpha: 2), seed: 1);
        Peft.AddAdapter("r8", TinyLlama.Lora("q_proj,v_proj,down_proj", r: 8, alpha: 16) with { UseRsLora = true, LoraBias = true }, seed: 2);
        Peft.AddAdapter("r32", TinyLlama.Lora("all-linear", r: 32, alpha: 16), seed: 3);
        Peft.AddAdapter("dora", TinyLlama.Lora("q_proj,o_proj,down_proj", r: 4) with { UseDora = true }, seed: 4);
        Peft.AddAdapter("ia3", new Ia3Config(), seed: 5);
        int seed = 20;
        foreach (var name in AdapterNames[..4])
        {
            TinyLlama.Randomize(Reference, name, seed += 10);
        }

        foreach (var (module, a) in PeftKernels.Peft.Lora.Adapters(Reference, "dora"))
        {
            var linear = (Linear)Reference.NamedModules().First(m => m.Name == module).Module;
            var norms = linear.WeightNorms(a);
            var noise = TinyLlama.Uniform(norms.Length, seed++, 0.3f);
            for (int o = 0; o < norms.Length; o++)
            {
                a.Magnitude!.Data[o] = norms[o] * (1 + noise[o]);
            }
        }

        foreach (var adapter in Reference.NamedModules().Select(m => m.Module).OfType<Linear>().SelectMany(l => l.Ia3Adapters))
        {
            var noise = TinyLlama.Uniform(adapter.Features, seed++, 0.3f);
            for (int i = 0; i < noise.Length; i++)
            {
                adapter.L.Data[i] = 1 + noise[i];
            }
        }

        foreach (var name in AdapterNames)
        {
            Peft.SaveAdapter(folder.Path, name); // non-default adapters go to folder/name/
        }
    }

    public bool Quantized { get; }

    /// <summary>The model with every adapter attached (switch with <see cref="Peft"/>.SetAdapter).</summary>
    public LlamaForCausalLM Reference { get; }

    public PeftModel Peft { get; }

    public int Vocab => Reference.Config.VocabSize;

    /// <summary>The saved folder of adapter <paramref name="name"/>.</summary>
    public string Folder(string name) => Path.Combine(folder.Path, name);

    /// <summary>A fresh copy of the base model (same weights as <see cref="Reference"/>'s base).</summary>
    public LlamaForCausalLM NewModel()
    {
        var model = TinyLlama.Model(LlamaConfig.Tiny(40) with { HeadDim = 16, MaxPositionEmbeddings = 256 });
        if (Quantized)
        {
            model.QuantizeLinears();
        }

        return model;
    }

    /// <summary>An engine over a fresh base model with every adapter loaded under its name.</summary>
    public InferenceEngine Engine(EngineOptions? options = null)
    {
        var engine = new InferenceEngine(NewModel(), options);
        foreach (var name in AdapterNames)
        {
            engine.Adapters.Load(name, Folder(name));
        }

        return engine;
    }

    /// <summary>The reference logits [tokens.Length, vocab] with <paramref name="adapter"/> active (null: base).</summary>
    public float[] Logits(int[] tokens, string? adapter)
    {
        using var scope = Tape.NoGrad();
        if (adapter == null)
        {
            using (Peft.DisableAdapter())
            {
                return Reference.Forward(tokens).Data;
            }
        }

        Peft.SetAdapter(adapter);
        return Reference.Forward(tokens).Data;
    }

    /// <summary>Greedy tokens from the reference model alone with <paramref name="adapter"/> (null: base).</summary>
    public int[] Greedy(int[] prompt, int maxNew, string? adapter, IReadOnlyList<int>? stop = null)
    {
        if (adapter == null)
        {
            using (Peft.DisableAdapter())
            {
                return Reference.Generate(prompt, maxNew, new GenerationOptions(StopTokens: stop));
            }
        }

        Peft.SetAdapter(adapter);
        return Reference.Generate(prompt, maxNew, new GenerationOptions(StopTokens: stop));
    }

    public void Dispose() => folder.Dispose();
}
