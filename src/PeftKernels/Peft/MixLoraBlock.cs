// One decoder layer's MixLoRA mixture over the MLP (docs/formats/mixlora.md#forward). x [n, H] is the
// MLP's (normed) input; W_g [E, H] the router; expert e is the frozen SwiGLU MLP with its own LoRA
// on gate/up/down (ΔW = s·B_e·A_e):
//   x̃ = x ⊙ U(1 − j, 1 + j)       training with jitter_noise j > 0 only, else x̃ = x
//   p = softmax(x̃·W_gᵀ)  [n, E];   sel, w = top-k of p, renormalised  [n, k]
//   g = W_gate·x̃, u = W_up·x̃      once for all tokens (shared by every expert)
//   for each expert e over only its tokens R_e (the gathered rows):
//     a_e = silu(g[R_e] + ΔW_gate,e·x̃[R_e]) ⊙ (u[R_e] + ΔW_up,e·x̃[R_e])
//   y = W_down·(Σ_e scatter(w·a_e)) + Σ_e scatter(w·ΔW_down,e·a_e)
// The last line equals the reference's Σ_e w·(W_down·a_e + ΔW_down,e·a_e) because W_down is linear and
// the renormalised weights of a token sum to 1 (a bias of down_proj is added once either way), so the
// frozen down projection runs once over n rows instead of k·n: the cost of the layer stays near a
// single LoRA's (the base GEMMs dominate). Gradients reach the router through w (TopKRouting,
// Softmax) and, in training, through the load-balancing loss that LlamaForCausalLM.Loss adds.
using PeftKernels.Kernels.Cpu;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Ops;

namespace PeftKernels.Peft;

/// <summary>The MixLoRA mixture of one MLP: the router and each expert's LoRA on gate/up/down.</summary>
public sealed class MixLoraBlock : Module
{
    private static readonly string[] MlpModules = ["gate_proj", "up_proj", "down_proj"];
    private readonly Dictionary<string, LoraAdapter[]> experts;

    internal MixLoraBlock(MixLoraConfig config, Parameter router, Dictionary<string, LoraAdapter[]> experts)
    {
        Config = config;
        Router = router;
        this.experts = experts;
    }

    /// <summary>The adapter's config.</summary>
    public MixLoraConfig Config { get; }

    /// <summary>The router W_g [E, hidden] (fp32, no bias).</summary>
    public Parameter Router { get; }

    /// <summary>The routing of the last training forward (probabilities and choices), for the load-balancing loss; null otherwise.</summary>
    internal (Tensor Probs, int[] Selected)? PendingRoute { get; set; }

    /// <summary>Expert <paramref name="expert"/>'s LoRA on <paramref name="module"/> (gate_proj, up_proj, down_proj), or null when not targeted.</summary>
    public LoraAdapter? Expert(string module, int expert) => experts.TryGetValue(module, out var list) ? list[expert] : null;

    /// <summary>The targeted MLP modules in the order gate, up, down.</summary>
    public IEnumerable<string> Modules => MlpModules.Where(experts.ContainsKey);

    /// <summary>Creates a freshly initialised block for <paramref name="mlp"/>: router N(0, range²), LoRA A kaiming-uniform, B = 0.</summary>
    internal static MixLoraBlock Create(LlamaMlp mlp, MixLoraConfig config, int layer, int seed)
    {
        int e = config.NumExperts, h = mlp.GateProj.InFeatures;
        var rng = new Random(HashCode.Combine(seed, layer, "router"));
        var router = new float[e * h];
        for (int i = 0; i < router.Length; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            router[i] = (float)(config.RouterInitRange * Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }

        var experts = new Dictionary<string, LoraAdapter[]>(StringComparer.Ordinal);
        foreach (var module in MlpModules.Where(config.Targets))
        {
            var linear = Linear(mlp, module);
            experts[module] = [.. Enumerable.Range(0, e).Select(x => new LoraAdapter($"expert{x}", linear.InFeatures, linear.OutFeatures, config.R, config.LoraAlpha,
                (float)config.LoraDropout, config.UseRsLora, ExpertSeed(seed, layer, module, x)))];
        }

        return new MixLoraBlock(config, new Parameter(router, [e, h], trainable: true), experts);
    }

    /// <summary>A block over existing tensors: router [E, H] and per module the experts' (A, B).</summary>
    internal static MixLoraBlock FromTensors(MixLoraConfig config, Parameter router, IReadOnlyDictionary<string, (Parameter A, Parameter B)[]> factors, int layer)
    {
        var experts = factors.ToDictionary(f => f.Key, f => f.Value.Select((ab, x) => new LoraAdapter($"expert{x}", ab.A, ab.B, null, config.LoraAlpha,
            (float)config.LoraDropout, config.UseRsLora, ExpertSeed(0, layer, f.Key, x))).ToArray(), StringComparer.Ordinal);
        return new MixLoraBlock(config, router, experts);
    }

    /// <summary>The linear of the MLP named <paramref name="module"/>.</summary>
    internal static Linear Linear(LlamaMlp mlp, string module) => module switch
    {
        "gate_proj" => mlp.GateProj,
        "up_proj" => mlp.UpProj,
        "down_proj" => mlp.DownProj,
        _ => throw new ArgumentOutOfRangeException(nameof(module), $"'{module}' is not an MLP projection."),
    };

    /// <summary>The mixture's output [n, hidden] for the MLP input x [n, hidden] (see the header).</summary>
    public Tensor Forward(LlamaMlp mlp, Tensor x, ForwardContext context)
    {
        ArgumentNullException.ThrowIfNull(mlp);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(context);
        bool training = Training && Autograd.Tape.IsRecording;
        var input = training && Config.JitterNoise > 0 ? Functional.ScaleElements(x, Jitter(x.Count, context.DropoutSeed)) : x;
        int k = Config.TopK;
        var probs = Functional.Softmax(Functional.Gemm(input, Router, null, context.Kernel));
        var route = Functional.TopKRouting(probs, k);
        PendingRoute = training ? (probs, route.Selected) : null;

        if (!input.Device.IsGpu)
        {
            return ForwardSegmented(mlp, input, route, context);
        }

        var gate = mlp.GateProj.Forward(input, context);
        var up = mlp.UpProj.Forward(input, context);
        return ForwardPerExpert(mlp, input, gate, up, route, context);
    }

    /// <summary>
    /// The host path: the k·n (token, slot) pairs sorted by expert (tokens ascending within an expert), x, gate and up gathered
    /// once into that order, one segmented LoRA per module (segment e = expert e's rows), one SwiGLU over the k·n rows, and one
    /// routed sum back to n rows for the activations and one for the down-projection deltas. x̃ is gathered before W_gate·x̃ and
    /// W_up·x̃ run, so in the backward its rows are added into the gradient those two have written (no fresh [n, H] buffer).
    /// </summary>
    private Tensor ForwardSegmented(LlamaMlp mlp, Tensor input, TopKRoute route, ForwardContext context)
    {
        int n = input.Rows, k = Config.TopK, count = Config.NumExperts;
        var (rows, slots, _) = Group(route.Selected, n, k, count);
        var starts = new int[count + 1];
        for (int e = 0; e < count; e++)
        {
            starts[e + 1] = starts[e] + rows[e].Length;
        }

        int[] tokenOf = [.. rows.SelectMany(r => r)], slotOf = [.. slots.SelectMany(s => s)];
        bool gateLora = Expert("gate_proj", 0) != null, upLora = Expert("up_proj", 0) != null;
        // The [k·n, ·] temporaries (x̃, G and U rows, the activations, their gradients) live in ScratchArrays from one step to the next.
        var xs = gateLora || upLora ? Functional.GatherRowsScratch(input, tokenOf, context.Kernel) : null;
        var gate = mlp.GateProj.Forward(input, context);
        var up = mlp.UpProj.Forward(input, context);
        // Each module's rows are gathered inside its segmented LoRA (each segment copies its rows just before its GEMMs).
        // gate and up are read by nothing after these gathers (their linears' backward reads only their gradient): their storage takes it.
        var gs = gateLora ? Segmented("gate_proj", gate, tokenOf, xs!, starts, context) : Functional.GatherRowsScratch(gate, tokenOf, context.Kernel, sourceTakesGrad: true);
        var us = upLora ? Segmented("up_proj", up, tokenOf, xs!, starts, context) : Functional.GatherRowsScratch(up, tokenOf, context.Kernel, sourceTakesGrad: true);

        // gs and us are this path's own temporaries (nothing reads them after SwiGLU's backward): their storage takes their gradients.
        var act = Functional.SwiGluIntoInputs(gs, us, context.Kernel);
        int[][] tokenList = [tokenOf], slotList = [slotOf];
        var y = mlp.DownProj.Forward(Functional.RoutedSumScratch([act], tokenList, slotList, route.Weights, n, context.Kernel), context);
        if (Expert("down_proj", 0) == null)
        {
            return y;
        }

        // The down deltas go straight into y's rows (no zeroed [k·n, H] start, no second routed sum, no add).
        var list = experts["down_proj"];
        var options = list.Select(l => Options(l, context)).ToArray();
        return Functional.RoutedSegmentedLoraBranch(y, act, tokenOf, slotOf, route.Weights, [.. list.Select(l => l.Factors)], starts, options[0].Dropout,
            [.. options.Select(o => o.Seed)], context.Kernel);
    }

    /// <summary>y + each expert's LoRA on <paramref name="module"/> over its segment of the expert-sorted rows.</summary>
    private Tensor Segmented(string module, Tensor y, Tensor x, int[] starts, ForwardContext context)
    {
        var list = experts[module];
        var options = list.Select(l => Options(l, context)).ToArray();
        return Functional.SegmentedLoraBranch(y, x, [.. list.Select(l => l.Factors)], starts, options[0].Dropout, [.. options.Select(o => o.Seed)], context.Kernel);
    }

    /// <summary>source[rows] + each expert's LoRA on <paramref name="module"/> over its segment of the expert-sorted rows.</summary>
    private Tensor Segmented(string module, Tensor source, int[] rows, Tensor x, int[] starts, ForwardContext context)
    {
        var list = experts[module];
        var options = list.Select(l => Options(l, context)).ToArray();
        return Functional.SegmentedLoraBranchGatheredScratch(source, rows, x, [.. list.Select(l => l.Factors)], starts, options[0].Dropout,
            [.. options.Select(o => o.Seed)], context.Kernel, sourceTakesGrad: true);
    }

    /// <summary>The device path: each expert's tokens gathered and run through LoraBranch and SwiGLU separately (docs/formats/mixlora.md#forward).</summary>
    private Tensor ForwardPerExpert(LlamaMlp mlp, Tensor input, Tensor gate, Tensor up, TopKRoute route, ForwardContext context)
    {
        int n = input.Rows, k = Config.TopK, kernelHidden = mlp.DownProj.OutFeatures;
        var (rows, slots, ids) = Group(route.Selected, n, k, Config.NumExperts);
        var acts = new List<Tensor>(ids.Count);
        var deltas = new List<Tensor>(ids.Count);
        foreach (int e in ids)
        {
            var rowsE = rows[e];
            var gateLora = Expert("gate_proj", e);
            var upLora = Expert("up_proj", e);
            var xe = gateLora != null || upLora != null ? Functional.GatherRows(input, rowsE) : null;
            var ge = Functional.GatherRows(gate, rowsE);
            var ue = Functional.GatherRows(up, rowsE);
            if (gateLora != null)
            {
                ge = Functional.LoraBranch(ge, xe!, gateLora.Factors, null, Options(gateLora, context));
            }

            if (upLora != null)
            {
                ue = Functional.LoraBranch(ue, xe!, upLora.Factors, null, Options(upLora, context));
            }

            var act = Functional.SwiGlu(ge, ue, context.Kernel);
            acts.Add(act);
            if (Expert("down_proj", e) is { } downLora)
            {
                deltas.Add(Functional.LoraBranch(Zeros(input.Device, rowsE.Length, kernelHidden), act, downLora.Factors, null, Options(downLora, context)));
            }
        }

        var used = ids.Select(e => rows[e]).ToList();
        var usedSlots = ids.Select(e => slots[e]).ToList();
        var y = mlp.DownProj.Forward(Functional.RoutedSum(acts, used, usedSlots, route.Weights, n), context);
        return deltas.Count == 0 ? y : Functional.Add(y, Functional.RoutedSum(deltas, used, usedSlots, route.Weights, n));
    }

    /// <summary>Per expert: the tokens routed to it (ascending) and the slot (0..k) of the choice; and the experts that got any token.</summary>
    internal static (int[][] Rows, int[][] Slots, List<int> Used) Group(int[] selected, int n, int k, int numExperts)
    {
        var counts = new int[numExperts];
        foreach (int e in selected)
        {
            counts[e]++;
        }

        var rows = counts.Select(c => new int[c]).ToArray();
        var slots = counts.Select(c => new int[c]).ToArray();
        Array.Clear(counts);
        for (int t = 0; t < n; t++)
        {
            for (int j = 0; j < k; j++)
            {
                int e = selected[(t * k) + j];
                rows[e][counts[e]] = t;
                slots[e][counts[e]++] = j;
            }
        }

        return (rows, slots, [.. Enumerable.Range(0, numExperts).Where(e => rows[e].Length > 0)]);
    }

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Parameter Parameter)> OwnParameters()
    {
        yield return ("moe_gate.weight", Router);
        foreach (var module in Modules)
        {
            for (int e = 0; e < Config.NumExperts; e++)
            {
                yield return ($"{module}.experts.{e}.lora_A.weight", experts[module][e].A);
                yield return ($"{module}.experts.{e}.lora_B.weight", experts[module][e].B);
            }
        }
    }

    /// <summary>A zero [rows, cols] tensor on <paramref name="device"/> (the start of an expert's down-projection delta).</summary>
    private static Tensor Zeros(Device device, int rows, int cols)
    {
        if (!device.IsGpu)
        {
            return Tensor.Zeros(rows, cols);
        }

        var zeros = OpChecks.DeviceTensor(device, [rows, cols]);
        zeros.View(device).MemSetToZero();
        return zeros;
    }

    private static ulong ExpertSeed(int seed, int layer, string module, int expert) =>
        ForwardContext.Mix((ulong)(uint)seed, ((ulong)(uint)layer << 24) ^ ((ulong)(uint)Array.IndexOf(MlpModules, module) << 16) ^ (uint)expert);

    private LoraOptions Options(LoraAdapter adapter, ForwardContext context) =>
        new(Training ? adapter.Dropout : 0f, ForwardContext.Mix(adapter.Seed, context.DropoutSeed), context.Kernel);

    private float[] Jitter(long count, ulong seed)
    {
        var rng = new Random((int)(ForwardContext.Mix(seed, 0x6A177E5UL) & int.MaxValue));
        float j = (float)Config.JitterNoise;
        var f = new float[count];
        for (long i = 0; i < count; i++)
        {
            f[i] = 1f - j + (2f * j * (float)rng.NextDouble());
        }

        return f;
    }
}
