using PeftKernels.Autograd;
using PeftKernels.Kernels.Reference;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// A whole MixLoRA MLP layer (MixLoraBlock: tokens grouped by expert, W_down run once) against the naive dense reference
/// (MixLoraReference: every expert on every token, per-expert down projection): forward, and every gradient (input, router,
/// each expert's A and B) against central finite differences of the double reference.
/// </summary>
public class MixLoraLayerTests
{
    private const int Hidden = 6, Inter = 10, Rank = 2;

    [Theory]
    [InlineData(7, 4, 2, "gate_proj,up_proj,down_proj")]
    [InlineData(5, 3, 3, "gate_proj,up_proj,down_proj")]
    [InlineData(3, 6, 1, "up_proj,down_proj")]
    [InlineData(4, 5, 2, "gate_proj")]
    public void GradientsMatchFiniteDifferencesOfTheDenseReference(int n, int experts, int topK, string targets)
    {
        var (mlp, block) = Layer(experts, topK, targets, seed: n + experts);
        var x = new Parameter(TestUtil.Random(n * Hidden, 40, 1.5f), [n, Hidden], trainable: true);
        var y = block.Forward(mlp, x, ForwardContext.Default);
        var expected = Reference(mlp, block, TestUtil.ToDouble(x.Data), n);
        TestUtil.AssertClose(y.Data, expected, 1e-5, 1e-4, "forward");

        var r = TestUtil.Random(n * Hidden, 41);
        Tape.Backward(y, r);
        var leaves = new List<(string Name, Parameter P)> { ("x", x), ("router", block.Router) };
        leaves.AddRange(block.NamedParameters().Where(p => p.Name.Contains(".lora_", StringComparison.Ordinal)));
        int[] routing = MixLoraReference.Selected(TestUtil.ToDouble(x.Data), TestUtil.ToDouble(block.Router.Data), n, Hidden, experts, topK);
        foreach (var (name, p) in leaves)
        {
            // An expert that no token chose gets no gradient at all (it did not run): its finite differences must be 0.
            Assert.True(p.Grad != null || name.Contains(".experts.", StringComparison.Ordinal), $"{name} has no gradient");
            var values = TestUtil.ToDouble(p.Data);
            for (int i = 0; i < values.Length; i++)
            {
                double saved = values[i];
                values[i] = saved + 1e-6;
                double plus = Loss(mlp, block, x, p, values, r, n, routing);
                values[i] = saved - 1e-6;
                double minus = Loss(mlp, block, x, p, values, r, n, routing);
                values[i] = saved;
                double numeric = (plus - minus) / 2e-6;
                float analytic = p.Grad?[i] ?? 0f;
                Assert.True(Math.Abs(analytic - numeric) <= 1e-4 + (1e-3 * Math.Abs(numeric)), $"{name}[{i}]: backward {analytic}, finite difference {numeric}");
            }
        }
    }

    [Fact]
    public void ExpertsRunOnlyOnTheirTokens()
    {
        // Grouping: each expert's rows are the tokens that chose it, ascending, with the slot of the choice.
        int[] selected = [2, 0, 0, 1, 2, 3];
        var (rows, slots, used) = MixLoraBlock.Group(selected, 3, 2, 5);
        Assert.Equal([0, 1, 2, 3], used);
        Assert.Equal([0, 1], rows[0]);
        Assert.Equal([1, 0], slots[0]);
        Assert.Equal([1], rows[1]);
        Assert.Equal([0, 2], rows[2]);
        Assert.Equal([0, 0], slots[2]);
        Assert.Equal([2], rows[3]);
        Assert.Equal([1], slots[3]);
        Assert.Empty(rows[4]);
    }

    [Fact]
    public void WithZeroLoraBTheMixtureIsTheBaseMlp()
    {
        var (mlp, _) = Layer(4, 2, "gate_proj,up_proj,down_proj", seed: 3);
        var block = MixLoraBlock.Create(mlp, new MixLoraConfig { NumExperts = 4, TopK = 2, R = Rank, LoraDropout = 0 }, 0, seed: 9);
        var x = new Tensor(TestUtil.Random(5 * Hidden, 50), 5, Hidden);
        using var scope = Tape.NoGrad();
        var baseY = mlp.Forward(x, ForwardContext.Default);
        TestUtil.AssertClose(block.Forward(mlp, x, ForwardContext.Default).Data, baseY.Data, 1e-5, 1e-4, "mixture with B = 0");
    }

    internal static (LlamaMlp Mlp, MixLoraBlock Block) Layer(int experts, int topK, string targets, int seed)
    {
        Linear Frozen(int outF, int inF, int s) => new(new Parameter(TestUtil.Random(outF * inF, s, 0.8f), [outF, inF]));
        var mlp = new LlamaMlp(Frozen(Inter, Hidden, seed), Frozen(Inter, Hidden, seed + 1), Frozen(Hidden, Inter, seed + 2));
        var config = new MixLoraConfig { NumExperts = experts, TopK = topK, R = Rank, LoraAlpha = 3, LoraDropout = 0, TargetModules = targets.Split(',') };
        var block = MixLoraBlock.Create(mlp, config, 0, seed);
        int i = 0;
        foreach (var (name, p) in block.NamedParameters())
        {
            // Random B (so each expert differs) and a router with logits of order 1 (so tokens spread over the experts).
            if (name.Contains("lora_B", StringComparison.Ordinal) || name.StartsWith("moe_gate", StringComparison.Ordinal))
            {
                TestUtil.Random(p.Data.Length, seed + (++i * 7), 1f).CopyTo(p.Data, 0);
            }
        }

        return (mlp, block);
    }

    private static double[] Reference(LlamaMlp mlp, MixLoraBlock block, double[] x, int n, Parameter? changed = null, double[]? values = null)
    {
        double[] D(Tensor t) => ReferenceEquals(t, changed) ? values! : TestUtil.ToDouble(t.Data);
        var experts = Enumerable.Range(0, block.Config.NumExperts).Select(e =>
        {
            double[]? Factor(string module, bool a) => block.Expert(module, e) is { } lora ? D(a ? lora.A : lora.B) : null;
            return new MixLoraReference.Expert(Factor("gate_proj", true), Factor("gate_proj", false), Factor("up_proj", true), Factor("up_proj", false),
                Factor("down_proj", true), Factor("down_proj", false));
        }).ToList();
        return MixLoraReference.Forward(x, D(mlp.GateProj.Weight), D(mlp.UpProj.Weight), D(mlp.DownProj.Weight), D(block.Router), experts,
            block.Config.Scale, n, Hidden, Inter, Rank, block.Config.TopK);
    }

    private static double Loss(LlamaMlp mlp, MixLoraBlock block, Parameter x, Parameter changed, double[] values, float[] r, int n, int[] routing)
    {
        var xd = ReferenceEquals(changed, x) ? values : TestUtil.ToDouble(x.Data);
        var router = ReferenceEquals(changed, block.Router) ? values : TestUtil.ToDouble(block.Router.Data);
        Assert.Equal(routing, MixLoraReference.Selected(xd, router, n, Hidden, block.Config.NumExperts, block.Config.TopK));
        var y = Reference(mlp, block, xd, n, changed, values);
        double s = 0;
        for (int i = 0; i < y.Length; i++)
        {
            s += y[i] * r[i];
        }

        return s;
    }
}
