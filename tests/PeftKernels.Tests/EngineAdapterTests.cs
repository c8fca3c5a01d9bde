using PeftKernels.Autograd;
using PeftKernels.Engine;
using PeftKernels.Nn;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// An EngineAdapter read by the registry reproduces every wrapped layer's output with the engine equations of its header
/// (LoRA, rsLoRA with lora_bias, DoRA on fp32 and 4-bit bases, IA³ input and output scaling), against Linear.Forward with
/// the same adapter folder loaded by PeftModel, and leaves the serving model untouched.
/// </summary>
public class EngineAdapterTests
{
    public static TheoryData<string, bool> Kinds() => new()
    {
        { "lora", false }, { "lora", true }, { "rslora-bias", false }, { "dora", false }, { "dora", true }, { "ia3", false }, { "ia3-ff-up", true },
    };

    private static PeftConfig KindConfig(string kind) => kind switch
    {
        "lora" => AdapterRegistryTests.Lora("all-linear"),
        "rslora-bias" => AdapterRegistryTests.Lora("q_proj,k_proj,o_proj,down_proj", r: 3) with { UseRsLora = true, LoraBias = true },
        "dora" => AdapterRegistryTests.Lora("all-linear", r: 5) with { UseDora = true, RankPattern = new Dictionary<string, int> { ["v_proj"] = 2 } },
        "ia3" => new Ia3Config(),
        _ => new Ia3Config { TargetModules = TargetModules.Parse("q_proj,o_proj,up_proj,down_proj"), FeedforwardModules = TargetModules.Parse("up_proj,down_proj") },
    };

    /// <summary>The engine equations of the EngineAdapter header, on W [out, in] (fp32 or dequantized), base bias b, rows x [n, in].</summary>
    private static float[] EngineForward(AdapterModule? m, float[] w, float[]? bias, float[] x, int n, int inF, int outF)
    {
        var y = new float[n * outF];
        for (int i = 0; i < n; i++)
        {
            var xi = x.AsSpan(i * inF, inF).ToArray();
            if (m is { Kind: AdapterKind.Ia3, Ia3Feedforward: true })
            {
                for (int k = 0; k < inF; k++)
                {
                    xi[k] *= m.Ia3.Span[k];
                }
            }

            var h = new double[m?.Rank ?? 0];
            for (int r = 0; r < h.Length; r++)
            {
                for (int k = 0; k < inF; k++)
                {
                    h[r] += m!.A.Span[(r * inF) + k] * (double)xi[k];
                }
            }

            for (int o = 0; o < outF; o++)
            {
                double base0 = 0, lora = 0;
                for (int k = 0; k < inF; k++)
                {
                    base0 += w[(o * inF) + k] * (double)xi[k];
                }

                for (int r = 0; r < h.Length; r++)
                {
                    lora += m!.B.Span[(o * h.Length) + r] * h[r];
                }

                double b = bias?[o] ?? 0, v = m?.Kind switch
                {
                    AdapterKind.Lora => base0 + b + (m.Scale * (lora + (m.LoraBias.IsEmpty ? 0 : m.LoraBias.Span[o]))),
                    AdapterKind.Dora => (m.ColumnScale.Span[o] * base0) + (m.Scale * lora) + b,
                    AdapterKind.Ia3 when !m.Ia3Feedforward => (base0 + b) * m.Ia3.Span[o],
                    _ => base0 + b,
                };
                y[(i * outF) + o] = (float)v;
            }
        }

        return y;
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void EngineAdapterReproducesEveryWrappedLayer(string kind, bool quantized)
    {
        using var dir = new TempFolder();
        var config = KindConfig(kind);
        string folder = AdapterRegistryTests.MakeAdapter(dir.Path, kind, config, seed: 7, quantized: quantized);
        var serving = AdapterRegistryTests.Base(quantized);
        var before = serving.NamedParameters().Select(p => (p.Name, p.Parameter, p.Parameter.Trainable)).ToList();
        var registry = new AdapterRegistry(serving);
        var adapter = registry.Load("x", folder);
        Assert.Equal(kind switch { "dora" => AdapterKind.Dora, "ia3" or "ia3-ff-up" => AdapterKind.Ia3, _ => AdapterKind.Lora }, adapter.Kind);
        Assert.Equal(adapter.Modules.Sum(m => m.Bytes), adapter.Bytes);

        // The serving model is left as it was: no adapters on its layers, the same parameter objects and flags.
        Assert.Equal(before, serving.NamedParameters().Select(p => (p.Name, p.Parameter, p.Parameter.Trainable)).ToList());

        var reference = AdapterRegistryTests.Base(quantized);
        new PeftModel(reference).LoadAdapter(folder);
        using var scope = Tape.NoGrad();
        var rng = new Random(11);
        int wrapped = 0;
        for (int l = 0; l < AdapterRegistryTests.Config.NumHiddenLayers; l++)
        {
            var layer = reference.Model.Layers[l];
            Linear[] linears = [layer.SelfAttn.QProj, layer.SelfAttn.KProj, layer.SelfAttn.VProj, layer.SelfAttn.OProj, layer.Mlp.GateProj, layer.Mlp.UpProj, layer.Mlp.DownProj];
            for (int p = 0; p < linears.Length; p++)
            {
                var lin = linears[p];
                var module = adapter.Get(l, (Projection)p);
                Assert.Equal(lin.AllAdapters.Count > 0, module != null);
                if (module == null)
                {
                    continue;
                }

                wrapped++;
                const int n = 3;
                var x = Enumerable.Range(0, n * lin.InFeatures).Select(_ => (float)((rng.NextDouble() * 2) - 1)).ToArray();
                var expected = lin.Forward(new Tensor(x, [n, lin.InFeatures])).Data;
                var actual = EngineForward(module, lin.Weight.ToFloat32(), lin.Bias?.Data, x, n, lin.InFeatures, lin.OutFeatures);
                double max = expected.Max(MathF.Abs);
                TestUtil.AssertClose(actual, expected, 2e-5 * max, 1e-4, $"{kind} layer {l} {(Projection)p}");

                // The adapter matters: the base alone is far from it.
                var plain = EngineForward(null, lin.Weight.ToFloat32(), lin.Bias?.Data, x, n, lin.InFeatures, lin.OutFeatures);
                Assert.True(plain.Zip(expected).Max(t => Math.Abs(t.First - t.Second)) > 1e-3 * max, $"{kind} layer {l} {(Projection)p} equals the base");
            }
        }

        Assert.Equal(adapter.Modules.Count, wrapped);
        Assert.True(wrapped >= 4);
    }
}
