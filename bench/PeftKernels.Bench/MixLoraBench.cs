// One Llama-125M-sized MLP layer's training step (forward + backward; docs/formats/mixlora.md#cost):
// hidden 768, intermediate 2048, n = 256 tokens, rank 16, the input requiring its gradient (as inside
// a model). Two adapters on the same frozen MLP:
//   lora      one LoRA on gate_proj, up_proj and down_proj (Lora.Apply)
//   mixlora   MixLoRA, 8 experts, top-2: the router, each expert's LoRA on gate/up/down run over only
//             its routed tokens, W_gate·x and W_up·x once, W_down once over the routed sum
// The target: mixlora ≤ 1.3 × lora. Both do the same frozen GEMMs (3 forward + 3 input-gradient
// GEMMs of 2·n·768·2048 FLOPs); MixLoRA adds k·n rows of LoRA, the routing and the row gathers.
// FLOPs are counted as those six base GEMMs, so the GFLOP/s column reads as base-GEMM throughput.
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;

namespace PeftKernels.Bench;

/// <summary>An 8-expert top-2 MixLoRA MLP's training step against a single LoRA of the same rank on the same MLP.</summary>
public class MixLoraBench : IWorkload
{
    private const int Tokens = 256, Hidden = 768, Inter = 2048, Rank = 16;
    private LlamaMlp mlp = null!;
    private Parameter x = null!;
    private float[] dy = [];
    private readonly ForwardContext context = ForwardContext.Default;

    [Params("lora", "mixlora")]
    public string Method { get; set; } = "lora";

    public double Flops(BenchmarkCase benchmarkCase) => 6.0 * 2 * Tokens * Hidden * Inter;

    public double Bytes(BenchmarkCase benchmarkCase) => 0;

    [GlobalSetup]
    public void Setup()
    {
        var config = LlamaConfig.Llama125M() with { NumHiddenLayers = 1, VocabSize = 256 };
        var model = LlamaForCausalLM.Create(config, seed: 1);
        if (Method == "lora")
        {
            Lora.Apply(model, new LoraConfig { R = Rank, LoraAlpha = 32, TargetModules = TargetModules.Parse("gate_proj,up_proj,down_proj") });
        }
        else
        {
            MixLoraAdapter.Attach(model, new MixLoraConfig { NumExperts = 8, TopK = 2, R = Rank, LoraAlpha = 32, LoraDropout = 0, TargetModules = ["gate_proj", "up_proj", "down_proj"] }, seed: 1);
        }

        model.Train(true);
        mlp = model.Model.Layers[0].Mlp;
        x = new Parameter(Workload.Random((long)Tokens * Hidden, seed: 2), [Tokens, Hidden], trainable: true);
        dy = Workload.Random((long)Tokens * Hidden, seed: 3);
        TrainStep();
    }

    [Benchmark]
    public float TrainStep()
    {
        var y = mlp.Forward(x, context);
        Tape.Backward(y, dy);
        foreach (var (_, p) in mlp.NamedParameters())
        {
            p.Grad = null;
        }

        x.Grad = null;
        return y.Data[0];
    }
}
