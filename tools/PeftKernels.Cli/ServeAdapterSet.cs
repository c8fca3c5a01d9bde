// The adapters of `peft bench serve`, written once per process to a temporary folder in PEFT layout:
// adapter k is a LoRA on every linear layer (all-linear) of rank 8, 16, 32, 64 cycling (alpha = 2·r),
// with A as PEFT initialises it and a random non-zero B (uniform in ±0.02), so every adapter changes
// the output and the engine does its full work. A few more ("fresh") adapters are written but never
// loaded by the scenarios: the cold-latency measurement loads them. Each adapter is added to the
// model, saved, and deleted again, so the model ends as it started and only one adapter is in memory
// at a time here. The folder is deleted on Dispose.
using PeftKernels.Models;
using PeftKernels.Peft;

namespace PeftKernels.Cli;

/// <summary>Saved random LoRA adapters of mixed ranks, in a temporary folder.</summary>
internal sealed class ServeAdapterSet : IDisposable
{
    private static readonly int[] RankCycle = [8, 16, 32, 64];
    private readonly string root;

    private ServeAdapterSet(string root, int count, int fresh)
    {
        this.root = root;
        Count = count;
        FreshCount = fresh;
    }

    /// <summary>Adapters of the scenarios.</summary>
    public int Count { get; }

    /// <summary>Adapters kept for the cold-latency measurement.</summary>
    public int FreshCount { get; }

    /// <summary>The rank of adapter <paramref name="k"/>.</summary>
    public static int Rank(int k) => RankCycle[k % RankCycle.Length];

    /// <summary>The name adapter <paramref name="k"/> is loaded under.</summary>
    public static string Name(int k) => $"adapter{k:D2}";

    /// <summary>Writes <paramref name="count"/> adapters plus <paramref name="fresh"/> fresh ones for <paramref name="model"/>'s shapes.</summary>
    public static ServeAdapterSet Create(LlamaForCausalLM model, int count, int fresh, int seed)
    {
        string root = Path.Combine(Path.GetTempPath(), $"peft-bench-serve-{Guid.NewGuid():N}");
        Directory.CreateDirectory(root);
        var set = new ServeAdapterSet(root, count, fresh);
        try
        {
            var peft = new PeftModel(model);
            for (int k = 0; k < count + fresh; k++)
            {
                int rank = Rank(k);
                string name = k < count ? Name(k) : $"fresh{k - count}";
                peft.AddAdapter(name, new LoraConfig { R = rank, LoraAlpha = 2 * rank, TargetModules = TargetModules.FromRegex(TargetModules.AllLinear) }, seed: seed + k);
                var rng = new Random(seed + (1000 * (k + 1)));
                foreach (var (_, adapter) in Lora.Adapters(model, name))
                {
                    var b = adapter.B.Data;
                    for (int i = 0; i < b.Length; i++)
                    {
                        b[i] = (rng.NextSingle() - 0.5f) * 0.04f;
                    }
                }

                peft.SaveAdapter(root, name);
                peft.DeleteAdapter(name);
            }

            return set;
        }
        catch
        {
            set.Dispose();
            throw;
        }
    }

    /// <summary>The folder of adapter <paramref name="k"/>.</summary>
    public string Folder(int k) => Path.Combine(root, Name(k));

    /// <summary>The folder of fresh adapter <paramref name="k"/>.</summary>
    public string FreshFolder(int k) => Path.Combine(root, $"fresh{k}");

    /// <summary>Deletes the folder.</summary>
    public void Dispose()
    {
        try
        {
            Directory.Delete(root, recursive: true);
        }
        catch (IOException)
        {
            // A temporary folder left behind is not worth failing the benchmark over.
        }
    }
}
