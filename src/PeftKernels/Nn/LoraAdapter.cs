// One named LoRA adapter on a layer: A [r, in], B [out, r], scale s = alpha / r (rsLoRA:
// alpha / sqrt(r)), dropout on the branch input, and optionally a bias on lora_B (lora_bias:
// y += s·(h·Bᵀ + bias_B)). Init (docs/formats/methods.md#lora-initialisation): Linear A ~ kaiming-uniform(a = √5) =
// U(−1/√in, 1/√in), B = 0, so the wrapped layer starts equal to the base; "gaussian": A ~
// N(0, 1/r). Embeddings follow PEFT the other way round: A = 0 [r, vocab], B ~ N(0, 1) [dim, r].
// DoRA: a magnitude vector m [out] (PEFT's lora_magnitude_vector), initialised by the layer to
// the row norms ‖W + s·B·A‖ (= ‖W‖ with B = 0); see Linear.Dora.cs for its forward.
namespace PeftKernels.Nn;

/// <summary>A LoRA adapter of one Linear or Embedding layer.</summary>
public sealed class LoraAdapter : LayerAdapter
{
    /// <summary>
    /// Creates a Linear adapter with PEFT's default init (or gaussian A), seeded. With <paramref name="useDora"/> it carries a
    /// magnitude vector [out], zero until set (PeftModel sets it to <see cref="Linear.WeightNorms"/>).
    /// </summary>
    public LoraAdapter(string name, int inFeatures, int outFeatures, int rank, double alpha, float dropout, bool useRsLora, ulong seed,
        bool gaussianInit = false, bool loraBias = false, bool useDora = false)
        : this(name, NewA(name, inFeatures, rank, seed, gaussianInit), new Parameter(new float[(long)outFeatures * Positive(rank, name)], [outFeatures, rank], trainable: true),
            loraBias ? new Parameter(new float[outFeatures], [outFeatures], trainable: true) : null, alpha, dropout, useRsLora, seed,
            useDora ? new Parameter(new float[outFeatures], [outFeatures], trainable: true) : null)
    {
    }

    /// <summary>An adapter over existing tensors A [r, in] and B [out, r] (and lora_B's bias [out], DoRA's magnitude [out]); they are not copied.</summary>
    public LoraAdapter(string name, Parameter a, Parameter b, Parameter? bias, double alpha, float dropout, bool useRsLora, ulong seed, Parameter? magnitude = null)
        : base(name)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        if (a.Shape.Length != 2 || b.Shape.Length != 2 || a.Shape[0] != b.Shape[1] || a.Shape[0] <= 0)
        {
            throw new ArgumentException($"adapter '{name}': A [{string.Join(", ", a.Shape)}] and B [{string.Join(", ", b.Shape)}] must be [r, in] and [out, r] with r > 0.", nameof(a));
        }

        if (a.DType != TensorDType.F32 || b.DType != TensorDType.F32 || (bias != null && (bias.DType != TensorDType.F32 || bias.Count != b.Shape[0])))
        {
            throw new ArgumentException($"adapter '{name}': A, B and the lora_B bias [{b.Shape[0]}] must be fp32.", nameof(a));
        }

        if (magnitude != null && (magnitude.DType != TensorDType.F32 || magnitude.Shape.Length != 1 || magnitude.Count != b.Shape[0]))
        {
            throw new ArgumentException($"adapter '{name}': the DoRA magnitude must be fp32 [{b.Shape[0]}]; got {magnitude.DType} [{string.Join(", ", magnitude.Shape)}].", nameof(magnitude));
        }

        if (magnitude != null && bias != null)
        {
            throw new ArgumentException($"adapter '{name}': a DoRA adapter cannot have a lora_B bias (PEFT refuses lora_bias with use_dora).", nameof(bias));
        }

        if (!(dropout >= 0f && dropout < 1f))
        {
            throw new ArgumentOutOfRangeException(nameof(dropout), $"LoRA dropout of adapter '{name}' must be in [0, 1); got {dropout.ToString(System.Globalization.CultureInfo.InvariantCulture)}.");
        }

        Alpha = alpha;
        Dropout = dropout;
        UseRsLora = useRsLora;
        Seed = seed;
        A = a;
        B = b;
        Bias = bias;
        Magnitude = magnitude;
    }

    /// <summary>The rank r.</summary>
    public int Rank => A.Shape[0];

    /// <summary>lora_alpha.</summary>
    public double Alpha { get; }

    /// <summary>Dropout probability of the branch input.</summary>
    public float Dropout { get; }

    /// <summary>rsLoRA scaling alpha / sqrt(r) instead of alpha / r.</summary>
    public bool UseRsLora { get; }

    /// <summary>Seed of this adapter's dropout masks (mixed with the step's seed).</summary>
    public ulong Seed { get; }

    /// <summary>s = alpha / r, or alpha / sqrt(r) with rsLoRA.</summary>
    public float Scale => (float)(UseRsLora ? Alpha / Math.Sqrt(Rank) : Alpha / Rank);

    /// <summary>lora_A [r, in] (embeddings: lora_embedding_A [r, vocab]).</summary>
    public Parameter A { get; }

    /// <summary>lora_B [out, r] (embeddings: lora_embedding_B [dim, r]).</summary>
    public Parameter B { get; }

    /// <summary>lora_B's bias [out] (lora_bias), or null.</summary>
    public Parameter? Bias { get; }

    /// <summary>DoRA's magnitude vector m [out] (lora_magnitude_vector), or null for plain LoRA.</summary>
    public Parameter? Magnitude { get; }

    /// <summary>True for a DoRA adapter (it has a magnitude vector).</summary>
    public bool UseDora => Magnitude != null;

    /// <summary>The factors as the ops (Functional.LoraMatmul, LoraBranch) take them.</summary>
    public Ops.LoraFactors Factors => new(A, B, Scale, Bias, Magnitude, Name);

    /// <summary>The adapter's parameters: A, B, and the lora_B bias and DoRA magnitude when present.</summary>
    public override IEnumerable<Parameter> Parameters => new[] { A, B, Bias, Magnitude }.OfType<Parameter>();

    /// <summary>An embedding adapter with PEFT's init: A = 0 [r, numEmbeddings], B ~ N(0, 1) [embeddingDim, r], seeded.</summary>
    public static LoraAdapter ForEmbedding(string name, int numEmbeddings, int embeddingDim, int rank, double alpha, bool useRsLora, ulong seed)
    {
        Positive(rank, name);
        var b = new float[(long)embeddingDim * rank];
        var rng = new Random((int)(seed ^ (seed >> 32)));
        for (int i = 0; i < b.Length; i++)
        {
            b[i] = (float)Normal(rng);
        }

        return new LoraAdapter(name, new Parameter(new float[(long)rank * numEmbeddings], [rank, numEmbeddings], trainable: true),
            new Parameter(b, [embeddingDim, rank], trainable: true), null, alpha, 0f, useRsLora, seed);
    }

    private static Parameter NewA(string name, int inFeatures, int rank, ulong seed, bool gaussianInit)
    {
        Positive(rank, name);
        var a = new float[(long)rank * inFeatures];
        var rng = new Random((int)(seed ^ (seed >> 32)));
        double bound = 1.0 / Math.Sqrt(inFeatures), std = 1.0 / Math.Sqrt(rank);
        for (int i = 0; i < a.Length; i++)
        {
            a[i] = (float)(gaussianInit ? std * Normal(rng) : ((rng.NextDouble() * 2) - 1) * bound);
        }

        return new Parameter(a, [rank, inFeatures], trainable: true);
    }

    // Box–Muller: one normal per pair of uniforms keeps the stream simple and seeded.
    private static double Normal(Random rng)
    {
        double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }

    private static int Positive(int rank, string name) =>
        rank > 0 ? rank : throw new ArgumentOutOfRangeException(nameof(rank), $"LoRA rank of adapter '{name}' must be positive; got {rank}.");
}
