namespace PeftKernels.Training;

/// <summary>Linear warm-up then cosine decay (transformers' get_cosine_schedule_with_warmup).</summary>
/// <param name="PeakLearningRate">The rate reached at the end of warm-up.</param>
/// <param name="WarmupSteps">Steps of linear warm-up from 0.</param>
/// <param name="TotalSteps">Total optimizer steps; the rate reaches MinRatio × peak at the end.</param>
/// <param name="MinRatio">Floor of the cosine as a fraction of the peak (0 = decay to zero).</param>
public sealed record LearningRateSchedule(double PeakLearningRate, int WarmupSteps, int TotalSteps, double MinRatio = 0)
{
    /// <summary>The rate for 0-based optimizer step <paramref name="step"/>.</summary>
    public double At(int step)
    {
        if (step < WarmupSteps)
        {
            return PeakLearningRate * step / Math.Max(1, WarmupSteps);
        }

        double progress = (double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps);
        double cosine = Math.Max(0, 0.5 * (1 + Math.Cos(Math.PI * Math.Min(progress, 1))));
        return PeakLearningRate * (MinRatio + ((1 - MinRatio) * cosine));
    }
}
