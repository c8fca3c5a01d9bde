// X-LoRA's classifier (docs/formats/xlora.md#forward-two-passes): from the scaling pass's last hidden state h [n, H] to
// the scalings [n, E] (or [n, E·L] with layerwise_scalings). Depth 1: one Linear(H → out). Depth d > 1: Linear(H → size),
// ReLU (+ dropout while training), d − 2 × [Linear(size → size), ReLU (+ dropout)], Linear(size → out). Every Linear has
// a bias; init is PyTorch's nn.Linear default U(−1/√in, 1/√in), seeded. Its parameters are named as PEFT's nn.Sequential
// numbers them (layers.<i>.weight / .bias, ReLU and Dropout taking indices too), so the state dict keys are PEFT's.
using PeftKernels.Nn;
using PeftKernels.Ops;

namespace PeftKernels.Peft.XLora;

/// <summary>The X-LoRA classifier: an MLP over the base model's last hidden state, then the gate.</summary>
public sealed class XLoraClassifier : Module
{
    private readonly List<(int Index, Parameter Weight, Parameter Bias)> linears = [];

    /// <summary>A freshly initialised classifier for <paramref name="config"/> and <paramref name="modules"/> LoRA modules (L), seeded.</summary>
    public XLoraClassifier(XLoraConfig config, int modules, int seed)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        if (modules <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(modules), $"X-LoRA needs at least one LoRA module; got {modules}.");
        }

        Config = config;
        Modules = modules;
        var rng = new Random(seed);
        foreach (var (index, inF, outF) in Shapes(config, modules))
        {
            float bound = 1f / MathF.Sqrt(inF);
            float[] Uniform(int count) => [.. Enumerable.Range(0, count).Select(_ => (float)(((rng.NextDouble() * 2) - 1) * bound))];
            linears.Add((index, new Parameter(Uniform(outF * inF), [outF, inF], trainable: true), new Parameter(Uniform(outF), [outF], trainable: true)));
        }
    }

    /// <summary>The config.</summary>
    public XLoraConfig Config { get; }

    /// <summary>L: the number of LoRA modules the scalings cover.</summary>
    public int Modules { get; }

    /// <summary>The classifier's output width: E, or E·L with layerwise scalings.</summary>
    public int Outputs => Config.Experts * (Config.LayerwiseScalings ? Modules : 1);

    /// <summary>The classifier's parameters (weight and bias of each Linear, in order).</summary>
    public IEnumerable<Parameter> Parameters => linears.SelectMany(l => new[] { l.Weight, l.Bias });

    /// <summary>The Linear layers as PEFT's nn.Sequential holds them: (index, in, out), in order.</summary>
    public static IReadOnlyList<(int Index, int In, int Out)> Shapes(XLoraConfig config, int modules)
    {
        ArgumentNullException.ThrowIfNull(config);
        int outputs = config.Experts * (config.LayerwiseScalings ? modules : 1);
        if (config.XLoraDepth == 1)
        {
            return [(0, config.HiddenSize, outputs)];
        }

        // Each hidden Linear is followed by a ReLU and, when xlora_dropout_p > 0, a Dropout: both take Sequential indices.
        int stride = config.XLoraDropoutP > 0 ? 3 : 2;
        var shapes = new List<(int, int, int)> { (0, config.HiddenSize, config.XLoraSize) };
        for (int i = 1; i < config.XLoraDepth - 1; i++)
        {
            shapes.Add((i * stride, config.XLoraSize, config.XLoraSize));
        }

        shapes.Add(((config.XLoraDepth - 1) * stride, config.XLoraSize, outputs));
        return shapes;
    }

    /// <summary>Scalings [n, Outputs] for the scaling pass's hidden state <paramref name="hidden"/> [n, H].</summary>
    public Tensor Forward(Tensor hidden, ForwardContext context)
    {
        ArgumentNullException.ThrowIfNull(hidden);
        ArgumentNullException.ThrowIfNull(context);
        if (hidden.Columns != Config.HiddenSize)
        {
            throw new ArgumentException($"the X-LoRA classifier takes hidden states of width {Config.HiddenSize}; got [{string.Join(", ", hidden.Shape)}].", nameof(hidden));
        }

        var h = hidden;
        for (int i = 0; i < linears.Count; i++)
        {
            var (index, w, b) = linears[i];
            h = Functional.Gemm(h, w, b, context.Kernel);
            if (i < linears.Count - 1)
            {
                float p = Training ? (float)Config.XLoraDropoutP : 0f;
                h = Functional.ReluDropout(h, p, ForwardContext.Mix((ulong)index + 0x5851F42DUL, context.DropoutSeed), context.Kernel);
            }
        }

        return Functional.XLoraGate(h, Config.Gate);
    }

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Parameter Parameter)> OwnParameters()
    {
        foreach (var (index, w, b) in linears)
        {
            yield return ($"layers.{index}.weight", w);
            yield return ($"layers.{index}.bias", b);
        }
    }
}
