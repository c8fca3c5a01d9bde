// Dropout mask of the LoRA branch, regenerated from (seed, element index) instead of stored.
//
//   z     = splitmix64(seed + index · 0x9E3779B97F4A7C15)      (index = row·inFeatures + col of x)
//   u     = z >> 40                                            (24 uniform bits)
//   keep  ⇔ u ≥ round(p · 2²⁴)
//   drop(x)[i] = keep ? x[i] / (1 − p) : 0
//
// The same function is used by forward (to build h) and backward (dA, dx), so the mask of a
// step is reproduced exactly without storing n × in bits.
namespace PeftKernels.Kernels.Reference;

/// <summary>Seeded, index-addressed dropout mask: the specification.</summary>
public static class DropoutReference
{
    /// <summary>The 24-bit threshold for drop probability <paramref name="p"/> in [0, 1).</summary>
    public static uint Threshold(float p) => (uint)Math.Round((double)p * (1 << 24));

    /// <summary>True when element <paramref name="index"/> is kept.</summary>
    public static bool Keep(ulong seed, long index, uint threshold)
    {
        ulong z = seed + ((ulong)index * 0x9E3779B97F4A7C15UL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (uint)(z >> 40) >= threshold;
    }

    /// <summary>drop(x) for a whole matrix stored densely (index = storage offset), in double.</summary>
    public static double[] Apply(double[] x, float p, ulong seed)
    {
        if (p == 0)
        {
            return x;
        }

        var result = new double[x.Length];
        uint threshold = Threshold(p);
        double keepScale = 1.0 / (1.0 - p);
        for (int i = 0; i < x.Length; i++)
        {
            result[i] = Keep(seed, i, threshold) ? x[i] * keepScale : 0.0;
        }

        return result;
    }
}
