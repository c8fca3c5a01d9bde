// Autoregressive generation with a KV cache: one prefill pass over the prompt, then one
// position per step. Tokens are picked by the engine's TokenSampler (the library's one sampler):
// greedy when temperature is 0; else sample from softmax(logits / T) restricted to the smallest
// set of most likely tokens whose mass reaches top-p (nucleus), with a seeded generator so a run
// is reproducible. On a GPU device the cache lives there too and
// each step downloads only the last position's logits row for the sampler. A row with NaN or ±Inf
// is refused (InvalidDataException naming the step) rather than turned into token 0 by argmax:
// sampling has no distribution then (torch.multinomial raises on such probabilities).
using System.Globalization;
using ILGPU.Runtime;
using PeftKernels.Autograd;
using PeftKernels.Engine;
using PeftKernels.Nn;

namespace PeftKernels.Models;

/// <summary>Sampling settings of <see cref="LlamaForCausalLM.Generate"/>.</summary>
/// <param name="Temperature">0 = greedy; otherwise logits are divided by it before softmax.</param>
/// <param name="TopP">Nucleus mass in (0, 1]; 1 keeps every token.</param>
/// <param name="Seed">Seed of the sampler.</param>
/// <param name="StopTokens">Generation stops after emitting one of these (e.g. EOS).</param>
public sealed record GenerationOptions(float Temperature = 0f, float TopP = 1f, int Seed = 0, IReadOnlyList<int>? StopTokens = null);

public sealed partial class LlamaForCausalLM
{
    /// <summary>Generates up to <paramref name="maxNewTokens"/> tokens after <paramref name="prompt"/>; returns only the new tokens.</summary>
    /// <exception cref="InvalidDataException">The logits row of a step holds NaN or an infinity (the step and position are named).</exception>
    public int[] Generate(int[] prompt, int maxNewTokens, GenerationOptions? options = null, ForwardContext? context = null)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        options ??= new GenerationOptions();
        if (prompt.Length == 0)
        {
            throw new ArgumentException("the prompt is empty; give at least one token (e.g. BOS).", nameof(prompt));
        }

        if (maxNewTokens < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(maxNewTokens), string.Create(CultureInfo.InvariantCulture, $"maxNewTokens must be >= 0; got {maxNewTokens}."));
        }

        if (!(options.Temperature >= 0 && float.IsFinite(options.Temperature)) || !(options.TopP > 0 && options.TopP <= 1))
        {
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                $"temperature must be finite and >= 0, and top-p in (0, 1]; got temperature {options.Temperature} and top-p {options.TopP}."), nameof(options));
        }

        using var scope = Tape.NoGrad();
        using var cache = CreateCache(VirtualTokens + prompt.Length + Math.Max(maxNewTokens, 1));
        var sampler = new TokenSampler(new SamplingParams(options.Temperature, options.TopP, Seed: options.Seed, StopTokenIds: options.StopTokens, MaxTokens: maxNewTokens));
        // Each step's activations live in a DeviceScope that ends once its logits row is on the host, so on a device the
        // next step takes the same pooled blocks again.
        var stepScope = DeviceScope.Begin();
        var logits = Forward(prompt, 1, cache, context);
        try
        {
            return Decode(logits, maxNewTokens, sampler, cache, context, ref stepScope, prompt.Length);
        }
        finally
        {
            stepScope.Dispose();
        }
    }

    private int[] Decode(Tensor logits, int maxNewTokens, TokenSampler sampler, KvCache cache, ForwardContext? context, ref DeviceScope stepScope, int promptLength)
    {
        var output = new List<int>();
        var last = new float[Config.VocabSize];
        for (int step = 0; step < maxNewTokens; step++)
        {
            LastRow(logits, last);
            stepScope.Dispose();
            int bad = FirstNonFinite(last);
            if (bad >= 0)
            {
                throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                    $"the logits are not finite at generation step {step + 1} (sequence position {promptLength + step - 1}): {last[bad]} at vocabulary index {bad}"));
            }

            int next = sampler.Next(last);
            output.Add(next);
            if (sampler.IsStop(next) || step == maxNewTokens - 1)
            {
                break;
            }

            stepScope = DeviceScope.Begin();
            logits = Forward([next], 1, cache, context);
        }

        return [.. output];
    }

    /// <summary>An empty KV cache on this model's <see cref="Device"/> for <paramref name="batch"/> sequences of up to <paramref name="capacity"/> positions.</summary>
    public KvCache CreateCache(int capacity, int batch = 1) =>
        new(Config.NumHiddenLayers, batch, capacity, Config.NumKeyValueHeads * Config.HeadDim, Device);

    /// <summary>Copies the last row of <paramref name="logits"/> into <paramref name="row"/>; on a device only that row is downloaded.</summary>
    private static void LastRow(Tensor logits, float[] row)
    {
        long at = logits.Count - row.Length;
        if (logits.Device.IsGpu && logits.LivesOnDeviceOnly)
        {
            // The decode step's one wait: the kernels that wrote the logits, then the copy of this row.
            DeviceSync.Download(logits.View(logits.Device).SubView(at, row.Length), row);
        }
        else
        {
            logits.Data.AsSpan((int)at, row.Length).CopyTo(row);
        }
    }

    /// <summary>Index of the first NaN or infinite value of <paramref name="row"/>, or −1.</summary>
    internal static int FirstNonFinite(ReadOnlySpan<float> row)
    {
        for (int i = 0; i < row.Length; i++)
        {
            if (!float.IsFinite(row[i]))
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>Index of the largest logit (the first one on ties, as torch.argmax).</summary>
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++)
        {
            if (logits[i] > logits[best])
            {
                best = i;
            }
        }

        return best;
    }
}
