// AdamW (Loshchilov & Hutter; torch.optim.AdamW): decoupled weight decay and bias-corrected
// moments, one fused kernel pass per parameter (Kernels.Cpu.AdamW.Step). Only trainable
// parameters are registered, so frozen base weights cost no optimizer memory. Parameter
// groups carry a learning-rate multiplier (LoRA+: B's rate is λ × A's) and a weight decay.
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Training;

/// <summary>A set of parameters sharing a learning-rate multiplier and weight decay.</summary>
/// <param name="Parameters">The parameters (must be trainable).</param>
/// <param name="LearningRateMultiplier">Scales the schedule's learning rate for this group.</param>
/// <param name="WeightDecay">Decoupled weight decay of this group.</param>
public sealed record ParameterGroup(IReadOnlyList<Parameter> Parameters, double LearningRateMultiplier = 1, double WeightDecay = 0);

/// <summary>The AdamW optimizer over fp32 trainable parameters.</summary>
public sealed class AdamWOptimizer
{
    private readonly List<(Parameter Parameter, ParameterGroup Group, float[] M, float[] V)> state = [];

    /// <summary>Creates the optimizer; moments start at zero.</summary>
    public AdamWOptimizer(IEnumerable<ParameterGroup> groups, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8)
    {
        ArgumentNullException.ThrowIfNull(groups);
        foreach (var g in groups)
        {
            foreach (var p in g.Parameters)
            {
                if (!p.Trainable)
                {
                    throw new ArgumentException($"parameter [{string.Join(", ", p.Shape)}] is frozen; only trainable parameters go to the optimizer.", nameof(groups));
                }

                if (state.Any(s => ReferenceEquals(s.Parameter, p)))
                {
                    throw new ArgumentException("a parameter appears in two groups.", nameof(groups));
                }

                state.Add((p, g, new float[p.Count], new float[p.Count]));
            }
        }

        Beta1 = beta1;
        Beta2 = beta2;
        Eps = eps;
    }

    /// <summary>β1.</summary>
    public double Beta1 { get; }

    /// <summary>β2.</summary>
    public double Beta2 { get; }

    /// <summary>ε.</summary>
    public double Eps { get; }

    /// <summary>Optimizer steps taken (t of the bias correction).</summary>
    public int StepCount { get; set; }

    /// <summary>The registered parameters with their moments (exp_avg, exp_avg_sq), in registration order.</summary>
    public IReadOnlyList<(Parameter Parameter, ParameterGroup Group, float[] M, float[] V)> State => state;

    /// <summary>Bytes of optimizer state (two fp32 moments per trainable element).</summary>
    public long StateBytes => state.Sum(s => (s.M.LongLength + s.V.LongLength) * 4);

    /// <summary>One update with learning rate <paramref name="learningRate"/> (× each group's multiplier); parameters without a gradient are skipped.</summary>
    public void Step(double learningRate, KernelOptions options = default)
    {
        StepCount++;
        foreach (var (p, g, m, v) in state)
        {
            if (p.Grad == null)
            {
                continue;
            }

            Kernels.Cpu.AdamW.Step(p.Data, p.Grad, m, v, (float)(learningRate * g.LearningRateMultiplier), (float)Beta1, (float)Beta2, (float)Eps,
                (float)g.WeightDecay, StepCount, options);

            // A parameter of a model on a GPU device is updated on the host (its gradient was downloaded) and re-uploaded.
            p.RefreshMirror();
        }
    }

    /// <summary>Clears every registered gradient.</summary>
    public void ZeroGrad()
    {
        foreach (var (p, _, _, _) in state)
        {
            p.ZeroGrad();
        }
    }

    /// <summary>Global L2 norm of all gradients; when above <paramref name="maxNorm"/> they are scaled by maxNorm / (norm + 1e-6) (torch.nn.utils.clip_grad_norm_). Returns the norm before clipping.</summary>
    public double ClipGradNorm(double maxNorm, KernelOptions options = default)
    {
        double sum = 0;
        foreach (var (p, _, _, _) in state)
        {
            if (p.Grad != null)
            {
                sum += Kernels.Cpu.AdamW.SumOfSquares(p.Grad, options);
            }
        }

        double norm = Math.Sqrt(sum);
        double coef = maxNorm / (norm + 1e-6);
        if (maxNorm > 0 && coef < 1)
        {
            foreach (var (p, _, _, _) in state)
            {
                if (p.Grad != null)
                {
                    Kernels.Cpu.AdamW.Scale(p.Grad, (float)coef, options);
                }
            }
        }

        return norm;
    }
}
