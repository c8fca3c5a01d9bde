// IA³ (docs/formats/methods.md#ia3): one learned vector l per layer, initialised to ones. Output
// scaling (attention modules) l [out], stored [out, 1] as PEFT does: y = (x·Wᵀ + b) ⊙ l. Input
// scaling (feed-forward modules) l [in], stored [1, in]: y = (x ⊙ l)·Wᵀ + b. The op is
// Functional.ScaleColumns (Ops/Ia3.cs).
namespace PeftKernels.Nn;

/// <summary>An IA³ vector of one Linear layer: output scaling (l [out, 1]) or, for feed-forward modules, input scaling (l [1, in]).</summary>
public sealed class Ia3Adapter : LayerAdapter
{
    /// <summary>A fresh trainable vector of <paramref name="features"/> entries: ones, or N(0, 1) seeded when <paramref name="initOnes"/> is false (PEFT's init_ia3_weights).</summary>
    public Ia3Adapter(string name, int features, bool feedforward, bool initOnes = true, ulong seed = 0)
        : this(name, NewVector(name, features, feedforward, initOnes, seed), feedforward)
    {
    }

    /// <summary>An adapter over an existing fp32 vector (not copied), shaped [out, 1] or, feed-forward, [1, in].</summary>
    /// <exception cref="ArgumentException">The vector is not fp32 of shape [f, 1] (output scaling) or [1, f] (feed-forward).</exception>
    public Ia3Adapter(string name, Parameter l, bool feedforward)
        : base(name)
    {
        ArgumentNullException.ThrowIfNull(l);
        if (l.DType != TensorDType.F32 || l.Shape.Length != 2 || l.Shape[feedforward ? 0 : 1] != 1 || l.Count == 0)
        {
            throw new ArgumentException($"IA³ adapter '{name}': ia3_l must be fp32 {(feedforward ? "[1, in]" : "[out, 1]")} "
                + $"for {(feedforward ? "input" : "output")} scaling; got {l.DType} [{string.Join(", ", l.Shape)}].", nameof(l));
        }

        L = l;
        IsFeedforward = feedforward;
    }

    /// <summary>ia3_l: [out, 1] (output scaling) or [1, in] (feed-forward, input scaling).</summary>
    public Parameter L { get; }

    /// <summary>True when the layer's input is scaled (feed-forward modules), false when its output is.</summary>
    public bool IsFeedforward { get; }

    /// <summary>Entries of l: out_features, or in_features when feed-forward.</summary>
    public int Features => (int)L.Count;

    /// <inheritdoc/>
    public override IEnumerable<Parameter> Parameters => [L];

    private static Parameter NewVector(string name, int features, bool feedforward, bool initOnes, ulong seed)
    {
        if (features <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(features), $"IA³ adapter '{name}' needs a positive feature count; got {features}.");
        }

        var l = new float[features];
        if (initOnes)
        {
            l.AsSpan().Fill(1f);
        }
        else
        {
            var rng = new Random((int)(seed ^ (seed >> 32)));
            for (int i = 0; i < l.Length; i++)
            {
                double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
                l[i] = (float)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
            }
        }

        return new Parameter(l, feedforward ? [1, features] : [features, 1], trainable: true);
    }
}
