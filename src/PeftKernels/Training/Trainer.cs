// The training loop: per optimizer step, `GradientAccumulation` micro-batches (loss scaled by
// 1/accumulation in backward), global-norm clipping, the scheduled learning rate, AdamW, zero
// grad. Every random choice of a micro-step (its batch and its dropout masks) is a function of
// (seed, micro-step index) only, so a run resumed from a checkpoint at step k replays exactly
// the batches and masks of the uninterrupted run, and gives the same losses bit for bit.
// A non-finite loss or gradient norm stops the run with TrainingDivergedException before the
// optimizer update, so the parameters keep the last finite step's values. With
// SkipNonFiniteSteps such a step is skipped instead, as mixed-precision loss scalers do: no
// update, the AdamW moments and bias-correction count untouched, but the step is counted (its
// batches are consumed and the schedule moves on), recorded in SkippedSteps and reported; more
// than MaxSkippedSteps skipped steps stop the run as a divergence.
using System.Diagnostics;
using System.Globalization;
using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Models;
using PeftKernels.Nn;

namespace PeftKernels.Training;

/// <summary>Training hyper-parameters.</summary>
public sealed record TrainerOptions
{
    /// <summary>Optimizer steps in the whole run.</summary>
    public int Steps { get; init; } = 100;

    /// <summary>Micro-batches per optimizer step.</summary>
    public int GradientAccumulation { get; init; } = 1;

    /// <summary>Peak learning rate.</summary>
    public double LearningRate { get; init; } = 2e-4;

    /// <summary>Linear warm-up steps.</summary>
    public int WarmupSteps { get; init; }

    /// <summary>Final learning rate as a fraction of the peak (cosine floor).</summary>
    public double MinLearningRateRatio { get; init; }

    /// <summary>Decoupled weight decay.</summary>
    public double WeightDecay { get; init; }

    /// <summary>LoRA+ ratio: lora_B's (and 1-D parameters', as in PEFT) learning rate is this multiple of lora_A's (1 = plain LoRA).</summary>
    public double LoraPlusRatio { get; init; } = 1;

    /// <summary>Clip the global gradient norm to this (0 = no clipping).</summary>
    public double MaxGradNorm { get; init; } = 1.0;

    /// <summary>
    /// Skip a step whose loss or gradient norm is NaN or infinite (no optimizer update, moments untouched) instead of
    /// stopping with <see cref="TrainingDivergedException"/>.
    /// </summary>
    public bool SkipNonFiniteSteps { get; init; }

    /// <summary>With <see cref="SkipNonFiniteSteps"/>: the most steps that may be skipped; the next non-finite step stops the run.</summary>
    public int MaxSkippedSteps { get; init; } = int.MaxValue;

    /// <summary>Seed of batches and dropout.</summary>
    public int Seed { get; init; }

    /// <summary>Kernel threads and SIMD path.</summary>
    public KernelOptions Kernel { get; init; }

    /// <summary>
    /// Precision of the forward and backward matrix products: fp32 (default), or bf16 operands with fp32 sums (like torch's bf16
    /// autocast: norms, softmax, the loss and the optimizer stay fp32). Bf16 here or in <see cref="Kernel"/>'s Compute turns it on.
    /// </summary>
    public ComputePrecision Compute { get; init; }

    /// <summary>The kernel options of the forward and backward passes: <see cref="Kernel"/> at <see cref="Compute"/>.</summary>
    internal KernelOptions PassKernel => Compute == ComputePrecision.Bf16 ? Kernel with { Compute = ComputePrecision.Bf16 } : Kernel;

    /// <summary>
    /// Run a full garbage collection after a step once this many bytes were allocated since the last one
    /// (0 = never force). Every op allocates its output, so without this the GC lets several steps of dead
    /// activations pile up before collecting; a blocking collection of a heap of large float arrays costs
    /// milliseconds, far less than a step that allocates hundreds of megabytes.
    /// </summary>
    public long CollectAfterAllocatedBytes { get; init; } = 256L << 20;

    /// <summary>Data-parallel training over a group of ranks (null = this process alone; see <see cref="DataParallelOptions"/>).</summary>
    public DataParallelOptions? DataParallel { get; init; }
}

/// <summary>One optimizer step's report.</summary>
/// <param name="Step">Steps done (1-based).</param>
/// <param name="TotalSteps">Steps in the run.</param>
/// <param name="Loss">Mean loss of the step's micro-batches.</param>
/// <param name="TokensPerSecond">Tokens processed per second over the run so far.</param>
/// <param name="LearningRate">The rate used for this step.</param>
/// <param name="GradNorm">Global gradient norm before clipping.</param>
/// <param name="Elapsed">Wall time since the run (or resume) started.</param>
/// <param name="Eta">Estimated time to the last step.</param>
public sealed record TrainingProgress(int Step, int TotalSteps, double Loss, double TokensPerSecond, double LearningRate, double GradNorm,
    TimeSpan Elapsed, TimeSpan Eta)
{
    /// <summary>Whether this step was skipped for a non-finite loss or gradient norm (no update; see <see cref="TrainerOptions.SkipNonFiniteSteps"/>).</summary>
    public bool Skipped { get; init; }

    /// <summary>Steps skipped so far in the run (including before a resume).</summary>
    public int SkippedSteps { get; init; }
}

/// <summary>Trains the trainable parameters of a causal LM.</summary>
public sealed partial class Trainer
{
    private readonly LlamaForCausalLM model;
    private readonly Func<Random, (int[] Inputs, int[] Labels)> sampler;
    private readonly int batch;
    private readonly List<double> losses = [];
    private readonly List<int> skipped = [];
    private int step;

    /// <summary>Creates a trainer; <paramref name="sampler"/> returns (inputs, next-token labels) of <paramref name="batch"/> rows from the given generator.</summary>
    public Trainer(LlamaForCausalLM model, Func<Random, (int[] Inputs, int[] Labels)> sampler, int batch, TrainerOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(sampler);
        ArgumentNullException.ThrowIfNull(options);
        if (options.Steps <= 0 || options.GradientAccumulation <= 0 || batch <= 0)
        {
            throw new ArgumentException($"steps ({options.Steps}), gradient accumulation ({options.GradientAccumulation}) and batch ({batch}) must be positive.");
        }

        if (options.MaxSkippedSteps < 0)
        {
            throw new ArgumentException($"MaxSkippedSteps must be >= 0; got {options.MaxSkippedSteps}.", nameof(options));
        }

        this.model = model;
        this.sampler = sampler;
        this.batch = batch;
        Options = options;
        var trainable = model.NamedParameters().Where(p => p.Parameter.Trainable).ToList();
        if (trainable.Count == 0)
        {
            throw new InvalidOperationException("the model has no trainable parameters (wrap it with LoRA first).");
        }

        // LoRA+ groups as PEFT's create_loraplus_optimizer: lora_B and every 1-D trainable parameter (biases) get ratio × lr.
        var bParams = trainable.Where(p => p.Name.Contains(".lora_B.", StringComparison.Ordinal) || p.Parameter.Shape.Length == 1).Select(p => p.Parameter).ToList();
        var others = trainable.Select(p => p.Parameter).Except(bParams).ToList();
        var groups = options.LoraPlusRatio == 1
            ? new[] { new ParameterGroup([.. trainable.Select(p => p.Parameter)], 1, options.WeightDecay) }
            : [new ParameterGroup(others, 1, options.WeightDecay), new ParameterGroup(bParams, options.LoraPlusRatio, options.WeightDecay)];
        Optimizer = new AdamWOptimizer(groups.Where(g => g.Parameters.Count > 0));
        Schedule = new LearningRateSchedule(options.LearningRate, options.WarmupSteps, options.Steps, options.MinLearningRateRatio);
        SetUpDataParallel(trainable);
    }

    /// <summary>The options.</summary>
    public TrainerOptions Options { get; }

    /// <summary>The optimizer (trainable parameters only).</summary>
    public AdamWOptimizer Optimizer { get; }

    /// <summary>The learning-rate schedule.</summary>
    public LearningRateSchedule Schedule { get; }

    /// <summary>Training steps done (skipped steps included; the optimizer's update count is <see cref="AdamWOptimizer.StepCount"/>).</summary>
    public int Step => step;

    /// <summary>The loss of every step done, in order (including steps before a resume; a skipped step's is non-finite).</summary>
    public IReadOnlyList<double> Losses => losses;

    /// <summary>The 1-based steps skipped for a non-finite loss or gradient norm, in order (including before a resume).</summary>
    public IReadOnlyList<int> SkippedSteps => skipped;

    /// <summary>The loss of the last step that updated the parameters (NaN before the first).</summary>
    public double LastFiniteLoss => losses.LastOrDefault(double.IsFinite, double.NaN);

    private long allocatedAtLastCollect;

    /// <summary>Trains until <paramref name="untilStep"/> (default: the last step), reporting each step.</summary>
    public void Run(IProgress<TrainingProgress>? progress = null, int? untilStep = null, CancellationToken cancellation = default)
    {
        int end = Math.Min(untilStep ?? Options.Steps, Options.Steps);
        int accum = Options.GradientAccumulation;
        var clock = Stopwatch.StartNew();
        long tokens = 0;
        int first = Step;
        model.Train(true);
        try
        {
            while (Step < end)
            {
                // On a device, the step's activations and their gradients go back to the pool when the step ends.
                using var deviceScope = DeviceScope.Begin();
                cancellation.ThrowIfCancellationRequested();
                double lossSum = 0;
                if (dataParallel != null)
                {
                    lossSum = DataParallelMicroSteps(accum, ref tokens);
                }

                for (int micro = 0; micro < accum && dataParallel == null; micro++)
                {
                    ulong index = ((ulong)Step * (ulong)accum) + (ulong)micro;
                    var rng = new Random((int)(ForwardContext.Mix((ulong)Options.Seed, index) & int.MaxValue));
                    var (inputs, labels) = sampler(rng);
                    var context = new ForwardContext(ForwardContext.Mix((ulong)Options.Seed ^ 0x5EEDUL, index), Options.PassKernel);
                    var loss = model.Loss(inputs, labels, batch, context);
                    lossSum += loss.Item();
                    Tape.Backward(loss, 1f / accum);
                    tokens += inputs.Length;
                }

                double stepLoss = lossSum / accum;
                double norm = double.NaN;
                string? bad = !double.IsFinite(stepLoss) ? "loss" : null;
                if (bad == null)
                {
                    norm = Optimizer.ClipGradNorm(Options.MaxGradNorm, Options.Kernel);
                    bad = double.IsFinite(norm) ? null : "gradient norm";
                }

                double lr = Schedule.At(Step);
                if (bad != null)
                {
                    Optimizer.ZeroGrad();
                    double value = bad == "loss" ? stepLoss : norm;
                    if (!Options.SkipNonFiniteSteps)
                    {
                        throw new TrainingDivergedException(Step + 1, stepLoss, bad, value);
                    }

                    if (skipped.Count >= Options.MaxSkippedSteps)
                    {
                        throw new TrainingDivergedException(string.Create(CultureInfo.InvariantCulture,
                            $"training diverged at step {Step + 1}: {bad} {value}, and {skipped.Count} non-finite step(s) were already skipped, the most allowed"));
                    }

                    skipped.Add(Step + 1);
                }
                else
                {
                    Optimizer.Step(lr, Options.Kernel);
                    Optimizer.ZeroGrad();
                }

                losses.Add(stepLoss);
                step++;
                CollectIfDue();
                double seconds = clock.Elapsed.TotalSeconds;
                int done = Step - first;
                var eta = TimeSpan.FromSeconds(seconds / Math.Max(1, done) * (end - Step));
                progress?.Report(new TrainingProgress(Step, Options.Steps, stepLoss, tokens / Math.Max(seconds, 1e-9), lr, norm, clock.Elapsed, eta)
                {
                    Skipped = bad != null,
                    SkippedSteps = skipped.Count,
                });
            }
        }
        finally
        {
            Tape.Clear();
            model.Train(false);
        }
    }

    private void CollectIfDue()
    {
        long allocated = GC.GetTotalAllocatedBytes();
        if (Options.CollectAfterAllocatedBytes > 0 && allocated - allocatedAtLastCollect >= Options.CollectAfterAllocatedBytes)
        {
            GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: false);
            allocatedAtLastCollect = GC.GetTotalAllocatedBytes();
        }
    }
}
