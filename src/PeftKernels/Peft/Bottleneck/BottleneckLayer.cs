// One bottleneck adapter at one site of one decoder layer (docs/formats/bottleneck-adapters.md#adapter):
//   A(z) = s·(W_up·f(W_down·z + b_down) + b_up),   z [rows, H] → [rows, H]
// composed from existing ops: Functional.Gemm (both projections), Functional.Activation (f),
// Functional.Scale (a float or "learned" s) or Functional.ScaleColumns ("channel" s [H]).
// Parameter names follow AdapterHub: adapter_down.0.weight [m, H], adapter_down.0.bias [m],
// adapter_up.weight [H, m], adapter_up.bias [H], and scaling ([1] or [H]) when it is learned.
// Init (AdapterHub): bert N(0, 0.02²) weights; houlsby truncated N(0, 0.01²) in ±0.02; mam_adapter
// kaiming-uniform W_down (bound 1/√H) and W_up = 0, so A = 0 and the layer starts as the base; biases 0.
using PeftKernels.Nn;
using PeftKernels.Ops;

namespace PeftKernels.Peft.Bottleneck;

/// <summary>One bottleneck adapter module (down projection, non-linearity, up projection, scaling).</summary>
public sealed class BottleneckLayer : Module
{
    private readonly NamedModule down;
    private readonly NamedModule up;
    private readonly Tensor? constantScale;

    internal BottleneckLayer(string name, BottleneckConfig config, int hidden, Random rng, bool trainable)
    {
        Name = name;
        Config = config;
        int m = config.Width(hidden);
        DownWeight = new Parameter(Init(config.InitWeights, m * hidden, hidden, rng, isUp: false), [m, hidden], trainable);
        DownBias = new Parameter(new float[m], [m], trainable);
        UpWeight = new Parameter(Init(config.InitWeights, hidden * m, m, rng, isUp: true), [hidden, m], trainable);
        UpBias = new Parameter(new float[hidden], [hidden], trainable);
        down = new NamedModule().Child("0", new NamedModule().Parameter("weight", DownWeight).Parameter("bias", DownBias));
        up = new NamedModule().Parameter("weight", UpWeight).Parameter("bias", UpBias);
        Scale = config.ScalingKind switch
        {
            BottleneckScalingKind.Learned => new Parameter([1f], [1], trainable),
            BottleneckScalingKind.Channel => new Parameter(Enumerable.Repeat(1f, hidden).ToArray(), [hidden], trainable),
            _ => null,
        };
        constantScale = config.ScalingKind == BottleneckScalingKind.Constant && config.Scaling != 1.0 ? new Tensor([(float)config.Scaling], 1) : null;
    }

    /// <summary>The adapter's name.</summary>
    public string Name { get; }

    /// <summary>Its configuration.</summary>
    public BottleneckConfig Config { get; }

    /// <summary>adapter_down.0.weight [m, H].</summary>
    public Parameter DownWeight { get; }

    /// <summary>adapter_down.0.bias [m].</summary>
    public Parameter DownBias { get; }

    /// <summary>adapter_up.weight [H, m].</summary>
    public Parameter UpWeight { get; }

    /// <summary>adapter_up.bias [H].</summary>
    public Parameter UpBias { get; }

    /// <summary>The learned scaling ([1] "learned", [H] "channel"), or null for a constant.</summary>
    public Parameter? Scale { get; }

    /// <summary>A(z) for z [rows, H].</summary>
    public Tensor Forward(Tensor z, ForwardContext context)
    {
        ArgumentNullException.ThrowIfNull(z);
        ArgumentNullException.ThrowIfNull(context);
        var hidden = Functional.Activation(Functional.Gemm(z, DownWeight, DownBias, context.Kernel), Config.Activation);
        var output = Functional.Gemm(hidden, UpWeight, UpBias, context.Kernel);
        return Config.ScalingKind switch
        {
            BottleneckScalingKind.Learned => Functional.Scale(output, Scale!),
            BottleneckScalingKind.Channel => Functional.ScaleColumns(output, Scale!, context.Kernel),
            _ => constantScale == null ? output : Functional.Scale(output, constantScale),
        };
    }

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Parameter Parameter)> OwnParameters() =>
        Scale == null ? [] : [("scaling", Scale)];

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Module Module)> Children() => [("adapter_down", down), ("adapter_up", up)];

    private static float[] Init(string scheme, int count, int fanIn, Random rng, bool isUp)
    {
        var data = new float[count];
        switch (scheme)
        {
            case "mam_adapter" when isUp:
                break;
            case "mam_adapter":
                float bound = 1f / MathF.Sqrt(fanIn);
                for (int i = 0; i < count; i++)
                {
                    data[i] = (float)(((rng.NextDouble() * 2) - 1) * bound);
                }

                break;
            case "houlsby":
                for (int i = 0; i < count; i++)
                {
                    double v;
                    do
                    {
                        v = 0.01 * Normal(rng);
                    }
                    while (Math.Abs(v) > 0.02);
                    data[i] = (float)v;
                }

                break;
            default:
                for (int i = 0; i < count; i++)
                {
                    data[i] = (float)(0.02 * Normal(rng));
                }

                break;
        }

        return data;
    }

    internal static double Normal(Random rng) =>
        Math.Sqrt(-2.0 * Math.Log(1.0 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
}
