// Thrown by the Trainer when a step's loss or global gradient norm is NaN or infinite. The step
// is refused before the optimizer update, so the parameters keep the values of the last finite
// step and nothing diverged is ever saved as a result.
using System.Globalization;

namespace PeftKernels.Training;

/// <summary>A training step produced a non-finite loss or gradient norm; the parameters were not updated by it.</summary>
public sealed class TrainingDivergedException : Exception
{
    /// <summary>Creates the exception for <paramref name="step"/> (1-based) with the offending <paramref name="what"/> and <paramref name="value"/>.</summary>
    public TrainingDivergedException(int step, double loss, string what, double value)
        : base(string.Create(CultureInfo.InvariantCulture, $"training diverged at step {step}: {what} {value}"))
    {
        Step = step;
        Loss = loss;
    }

    /// <summary>Creates the exception with a message only.</summary>
    public TrainingDivergedException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and an inner exception.</summary>
    public TrainingDivergedException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>Creates an empty exception.</summary>
    public TrainingDivergedException()
    {
    }

    /// <summary>The 1-based step that diverged.</summary>
    public int Step { get; }

    /// <summary>The step's mean loss (possibly NaN or infinite).</summary>
    public double Loss { get; } = double.NaN;
}
