// Federated averaging (FedAvg) of clients' adapters for one module (docs/formats/methods.md#federated-averaging):
//   θ = Σ_k n_k·θ_k / Σ_k n_k
// element-wise over every tensor θ (lora_A, lora_B, and any other adapter tensor), with n_k the
// client's sample count. The clients must share the adapter config (same rank, shapes and
// scale); the result keeps that scale. Sums are in double, rounded to fp32 once.
namespace PeftKernels.Peft;

public static partial class AdapterCombination
{
    /// <summary>FedAvg of one module's LoRA factors: A = Σ n_k·A_k / Σ n_k, likewise B; the scale is kept.</summary>
    /// <param name="clients">The clients' factors for this module: equal rank, shapes and scale.</param>
    /// <param name="sampleCounts">Each client's number of training samples, &gt; 0.</param>
    /// <exception cref="ArgumentException">No clients, a count mismatch, a count ≤ 0, or a rank, shape or scale mismatch.</exception>
    public static LoraFactors FederatedAverage(IReadOnlyList<LoraFactors> clients, IReadOnlyList<long> sampleCounts)
    {
        ArgumentNullException.ThrowIfNull(clients);
        if (clients.Count == 0)
        {
            throw new ArgumentException("no clients to average.", nameof(clients));
        }

        var first = clients[0] ?? throw new ArgumentException("client 0 is null.", nameof(clients));
        for (int k = 0; k < clients.Count; k++)
        {
            var c = clients[k] ?? throw new ArgumentException($"client {k} is null.", nameof(clients));
            if (c.Rank != first.Rank)
            {
                throw new ArgumentException(
                    $"federated averaging needs adapters of equal rank: client {k} has rank {c.Rank}, client 0 rank {first.Rank}.", nameof(clients));
            }

            if (c.InFeatures != first.InFeatures || c.OutFeatures != first.OutFeatures)
            {
                throw new ArgumentException(
                    $"client {k} is for a [{c.OutFeatures}, {c.InFeatures}] weight but client 0 for [{first.OutFeatures}, {first.InFeatures}].", nameof(clients));
            }

            if (c.Scale != first.Scale)
            {
                throw new ArgumentException(
                    $"client {k} has scale {c.Scale} but client 0 {first.Scale}: averaging A and B assumes one lora_alpha / r.", nameof(clients));
            }
        }

        var a = FederatedAverage(clients.Select(c => c.A).ToList(), sampleCounts, "lora_A");
        var b = FederatedAverage(clients.Select(c => c.B).ToList(), sampleCounts, "lora_B");
        return new LoraFactors(a, b, first.Rank, first.InFeatures, first.OutFeatures, first.Scale);
    }

    /// <summary>FedAvg of one tensor: Σ n_k·θ_k / Σ n_k element-wise.</summary>
    /// <param name="tensors">Each client's copy of the tensor, all of one length.</param>
    /// <param name="sampleCounts">Each client's number of training samples, &gt; 0.</param>
    /// <param name="name">The tensor's name, used in error messages.</param>
    /// <exception cref="ArgumentException">No tensors, a count mismatch, a count ≤ 0, or tensors of different lengths.</exception>
    public static float[] FederatedAverage(IReadOnlyList<float[]> tensors, IReadOnlyList<long> sampleCounts, string name = "tensor")
    {
        ArgumentNullException.ThrowIfNull(tensors);
        ArgumentNullException.ThrowIfNull(sampleCounts);
        if (tensors.Count == 0)
        {
            throw new ArgumentException($"{name}: no clients to average.", nameof(tensors));
        }

        if (sampleCounts.Count != tensors.Count)
        {
            throw new ArgumentException($"sampleCounts has {sampleCounts.Count} entries; expected one per client ({tensors.Count}).", nameof(sampleCounts));
        }

        for (int k = 0; k < sampleCounts.Count; k++)
        {
            if (sampleCounts[k] <= 0)
            {
                throw new ArgumentException($"sample count of client {k} is {sampleCounts[k]}; counts must be > 0.", nameof(sampleCounts));
            }

            if (tensors[k] is null || tensors[k].Length != tensors[0].Length)
            {
                throw new ArgumentException(
                    $"{name} of client {k} has {tensors[k]?.Length.ToString() ?? "no"} elements but client 0 has {tensors[0]?.Length}.", nameof(tensors));
            }
        }

        double total = sampleCounts.Sum(n => (double)n);
        var sum = new double[tensors[0].Length];
        for (int k = 0; k < tensors.Count; k++)
        {
            double weight = sampleCounts[k] / total;
            var t = tensors[k];
            for (int j = 0; j < sum.Length; j++)
            {
                sum[j] += weight * t[j];
            }
        }

        return Narrow(sum);
    }
}
