// AdamW (Loshchilov & Hutter; torch.optim.AdamW): decoupled weight decay and bias-corrected
// moments, one fused kernel pass per parameter (Kernels.Cpu.AdamW.Step). Only trainable
// parameters are registered, so frozen base weights cost no optimizer memory. Parameter
// groups carry a learning-rate multiplier (LoRA+: B's rate is λ × A's) and a weight decay.
// A parameter of a model on a GPU device is stepped there (AdamWKernels.Step, bit-identical to
// the CPU step): its moments live in device buffers (uploaded when the optimizer first meets it
// there, downloaded if it moves back to the CPU), its gradient never leaves the device, and its
// device copy becomes authoritative (the host Data is downloaded on the next read). Clipping
// runs there too (AdamWKernels.SumOfSquares / Scale); only the per-tensor norms come back.
using ILGPU;
using ILGPU.Runtime;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;

namespace PeftKernels.Training;

/// <summary>A set of parameters sharing a learning-rate multiplier and weight decay.</summary>
/// <param name="Parameters">The parameters (must be trainable).</param>
/// <param name="LearningRateMultiplier">Scales the schedule's learning rate for this group.</param>
/// <param name="WeightDecay">Decoupled weight decay of this group.</param>
public sealed record ParameterGroup(IReadOnlyList<Parameter> Parameters, double LearningRateMultiplier = 1, double WeightDecay = 0);

/// <summary>The AdamW optimizer over fp32 trainable parameters.</summary>
public sealed class AdamWOptimizer
{
    private readonly List<Entry> state = [];

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

                state.Add(new Entry(p, g));
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
    /// <remarks>
    /// Moments kept on the CPU are the optimizer's own arrays. Moments of a parameter stepped on a GPU device live in device
    /// buffers: for those, each read of State downloads copies (a snapshot: writing into them changes nothing).
    /// </remarks>
    public IReadOnlyList<(Parameter Parameter, ParameterGroup Group, float[] M, float[] V)> State =>
        [.. state.Select(e => (e.Parameter, e.Group, e.HostM ?? DeviceSync.Download(e.DeviceM!.View), e.HostV ?? DeviceSync.Download(e.DeviceV!.View)))];

    /// <summary>Bytes of optimizer state (two fp32 moments per trainable element), on the host and on devices together.</summary>
    public long StateBytes => state.Sum(s => s.Parameter.Count * 8);

    /// <summary>The part of <see cref="StateBytes"/> that lives in GPU memory (moments of parameters stepped on a device).</summary>
    public long DeviceStateBytes => state.Where(s => s.DeviceM != null).Sum(s => s.Parameter.Count * 8);

    /// <summary>The registered parameters, in registration order.</summary>
    internal IEnumerable<Parameter> Parameters => state.Select(s => s.Parameter);

    /// <summary>One update with learning rate <paramref name="learningRate"/> (× each group's multiplier); parameters without a gradient are skipped.</summary>
    public void Step(double learningRate, KernelOptions options = default)
    {
        StepCount++;
        foreach (var e in state)
        {
            var p = e.Parameter;
            var g = e.Group;
            if (!p.HasGrad)
            {
                continue;
            }

            float lr = (float)(learningRate * g.LearningRateMultiplier);
            if (e.Place() is { } accelerator)
            {
                AdamWKernels.Step(accelerator, p.View(p.Device), p.DeviceGrad, e.DeviceM!.View, e.DeviceV!.View, lr, (float)Beta1, (float)Beta2, (float)Eps,
                    (float)g.WeightDecay, StepCount);
                p.MarkMirrorChanged();
            }
            else
            {
                Kernels.Cpu.AdamW.Step(p.Data, p.Grad!, e.HostM!, e.HostV!, lr, (float)Beta1, (float)Beta2, (float)Eps, (float)g.WeightDecay, StepCount, options);
            }
        }
    }

    /// <summary>Clears every registered gradient (a gradient on a device is freed).</summary>
    public void ZeroGrad()
    {
        foreach (var e in state)
        {
            e.Parameter.ZeroGrad();
        }
    }

    /// <summary>Global L2 norm of all gradients; when above <paramref name="maxNorm"/> they are scaled by maxNorm / (norm + 1e-6) (torch.nn.utils.clip_grad_norm_). Returns the norm before clipping.</summary>
    /// <remarks>
    /// Gradients on a GPU device are measured and scaled there: every tensor's partial sums of squares go into one pooled
    /// buffer, read back with one wait (the training step's second, after the loss); the scaling is queued.
    /// </remarks>
    public double ClipGradNorm(double maxNorm, KernelOptions options = default)
    {
        double norm = Math.Sqrt(DeviceSumOfSquares() + HostSumOfSquares(options));
        double coef = maxNorm / (norm + 1e-6);
        if (maxNorm > 0 && coef < 1)
        {
            foreach (var e in state)
            {
                var p = e.Parameter;
                if (!p.HasGrad)
                {
                    continue;
                }

                if (e.Place() is { } accelerator)
                {
                    AdamWKernels.Scale(accelerator, p.DeviceGrad, (float)coef);
                    p.MarkDeviceGradChanged();
                }
                else
                {
                    Kernels.Cpu.AdamW.Scale(p.Grad!, (float)coef, options);
                }
            }
        }

        return norm;
    }

    /// <summary>Σ g² over the gradients that live on devices: queued per tensor into one buffer per accelerator, read back once each.</summary>
    private double DeviceSumOfSquares()
    {
        double sum = 0;
        foreach (var group in state.Where(e => e.Parameter.HasGrad).Select(e => (Entry: e, Accelerator: e.Place())).Where(x => x.Accelerator != null)
            .GroupBy(x => x.Accelerator!))
        {
            var accelerator = group.Key;
            var grads = group.Select(x => x.Entry.Parameter.DeviceGrad).ToList();
            var counts = grads.Select(g => AdamWKernels.SumOfSquaresPartials(g.Length)).ToList();
            using var partials = accelerator.Rent<double>(counts.Sum());
            int at = 0;
            for (int i = 0; i < grads.Count; i++)
            {
                AdamWKernels.SumOfSquaresInto(accelerator, grads[i], partials.View.SubView(at, counts[i]));
                at += counts[i];
            }

            var host = DeviceSync.Download(partials.View);
            at = 0;
            foreach (int count in counts)
            {
                sum += AdamWKernels.SumPartials(host.AsSpan(at, count)); // each tensor's partials in group order, tensors in registration order
                at += count;
            }
        }

        return sum;
    }

    /// <summary>Σ g² over the gradients on the host.</summary>
    private double HostSumOfSquares(KernelOptions options)
    {
        double sum = 0;
        foreach (var e in state)
        {
            if (e.Parameter.HasGrad && e.Place() == null)
            {
                sum += Kernels.Cpu.AdamW.SumOfSquares(e.Parameter.Grad!, options);
            }
        }

        return sum;
    }

    /// <summary>Replaces the moments of the <paramref name="index"/>-th registered parameter (a checkpoint being restored), wherever they live.</summary>
    internal void SetMoments(int index, float[] m, float[] v)
    {
        var e = state[index];
        if (e.DeviceM != null)
        {
            DeviceSync.Upload<float>(e.DeviceM.View, m);
            DeviceSync.Upload<float>(e.DeviceV!.View, v);
        }
        else
        {
            m.CopyTo(e.HostM!, 0);
            v.CopyTo(e.HostV!, 0);
        }
    }

    /// <summary>One parameter's moments: host arrays while it is on the CPU, device buffers while it is on an accelerator.</summary>
    private sealed class Entry(Parameter parameter, ParameterGroup group)
    {
        public Parameter Parameter { get; } = parameter;

        public ParameterGroup Group { get; } = group;

        public float[]? HostM { get; private set; } = new float[parameter.Count];

        public float[]? HostV { get; private set; } = new float[parameter.Count];

        public DeviceArray<float>? DeviceM { get; private set; }

        public DeviceArray<float>? DeviceV { get; private set; }

        /// <summary>Moves the moments to where the parameter is now; returns its accelerator, or null on the CPU.</summary>
        public Accelerator? Place()
        {
            var target = Parameter.HasMirror ? Parameter.Device.Accelerator : null;
            if (DeviceM != null && !ReferenceEquals(DeviceM.Accelerator, target))
            {
                HostM = DeviceSync.Download(DeviceM.View);
                HostV = DeviceSync.Download(DeviceV!.View);
                DeviceM.Dispose();
                DeviceV!.Dispose();
                DeviceM = DeviceV = null;
            }

            if (target != null && DeviceM == null)
            {
                DeviceM = target.Upload(HostM!);
                DeviceV = target.Upload(HostV!);
                HostM = HostV = null;
            }

            return target;
        }
    }
}
