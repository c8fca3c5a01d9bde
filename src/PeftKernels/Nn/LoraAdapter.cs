// One named LoRA adapter on a Linear: A [r, in], B [out, r], scale s = alpha / r
// (rsLoRA: alpha / sqrt(r)), dropout on the branch input. Init (peft-math.md): A ~
// kaiming-uniform(a = √5) = U(−1/√in, 1/√in), B = 0, so the wrapped layer starts equal to
// the base; "gaussian": A ~ N(0, 1/r).
namespace PeftKernels.Nn;

/// <summary>A LoRA adapter of one Linear layer.</summary>
public sealed class LoraAdapter
{
    /// <summary>Creates an adapter with PEFT's default init (or gaussian A), seeded.</summary>
    public LoraAdapter(string name, int inFeatures, int outFeatures, int rank, double alpha, float dropout, bool useRsLora, ulong seed, bool gaussianInit = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (rank <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(rank), rank, $"LoRA rank of adapter '{name}' must be positive.");
        }

        if (!(dropout >= 0f && dropout < 1f))
        {
            throw new ArgumentOutOfRangeException(nameof(dropout), dropout, $"LoRA dropout of adapter '{name}' must be in [0, 1).");
        }

        Name = name;
        Rank = rank;
        Alpha = alpha;
        Dropout = dropout;
        UseRsLora = useRsLora;
        Seed = seed;
        var a = new float[(long)rank * inFeatures];
        var rng = new Random((int)(seed ^ (seed >> 32)));
        if (gaussianInit)
        {
            double std = 1.0 / Math.Sqrt(rank);
            for (int i = 0; i < a.Length; i++)
            {
                // Box–Muller: one normal per pair of uniforms keeps the stream simple and seeded.
                double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
                a[i] = (float)(std * Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
            }
        }
        else
        {
            double bound = 1.0 / Math.Sqrt(inFeatures);
            for (int i = 0; i < a.Length; i++)
            {
                a[i] = (float)(((rng.NextDouble() * 2) - 1) * bound);
            }
        }

        A = new Parameter(a, [rank, inFeatures], trainable: true);
        B = new Parameter(new float[(long)outFeatures * rank], [outFeatures, rank], trainable: true);
    }

    /// <summary>The adapter name ("default" unless given).</summary>
    public string Name { get; }

    /// <summary>The rank r.</summary>
    public int Rank { get; }

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

    /// <summary>lora_A [r, in].</summary>
    public Parameter A { get; set; }

    /// <summary>lora_B [out, r].</summary>
    public Parameter B { get; set; }
}
