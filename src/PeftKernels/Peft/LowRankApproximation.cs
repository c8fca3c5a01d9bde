// Truncated SVD for the adapter combinations: M [rows, cols] ≈ U_k·Σ_k·V_kᵀ, returned as
// (U_k·Σ_k [rows, k], V_kᵀ [k, cols]) row-major, singular values in decreasing order; ranks
// beyond the matrix's own have σ = 0, so those columns / rows are zero.
// Three routes, one answer (up to the sign of each singular pair):
//  * low-rank product M = L·R, L [rows, p], R [p, cols], p small: thin QRs L = Q_L·R_L and
//    Rᵀ = Q_R·R_R, the p×p core C = R_L·R_Rᵀ = U_c·Σ·V_cᵀ, U = Q_L·U_c, V = Q_R·V_c
//    (O((rows + cols)·p²); M is never formed).
//  * small dense M (min side ≤ 128, or k close to it): thin QR of the taller orientation and
//    the SVD of its square R factor (Math.NET, double).
//  * large dense M: block subspace iteration on MᵀM with b = min(2k + 8, min side) vectors,
//    Q ← orth(Mᵀ·(M·Q)), the two products on the fp32 Gemm kernel, until the top-k Ritz values
//    settle (relative change ≤ 1e-6) or 300 iterations; then the Rayleigh–Ritz step
//    Y = M·Q, YᵀY = W·Λ·Wᵀ gives V = Q·W and U·Σ = Y·W = M·V exactly. Dense O(n³) SVDs of
//    4096-wide matrices take minutes in managed code; this takes seconds, to fp32 accuracy
//    (PEFT runs torch.linalg.svd in fp32 too). The start block is seeded: deterministic.
// Clamp (PEFT's svd_clamp = q): hi = quantile_q(entries of U·Σ and Vᵀ together, linear
// interpolation as torch.quantile), then both are clamped to [−hi, hi].
using MathNet.Numerics.LinearAlgebra;
using MathNet.Numerics.LinearAlgebra.Factorization;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Peft;

internal static class LowRankApproximation
{
    private const int ExactLimit = 128;
    private const int MaxIterations = 300;
    private const double Tolerance = 1e-6;

    /// <summary>Rank-k truncated SVD of a dense matrix (exact route when small, subspace iteration when large).</summary>
    public static (double[] US, double[] Vt) TruncatedSvd(double[] matrix, int rows, int cols, int k)
    {
        int small = Math.Min(rows, cols);
        return small <= ExactLimit || (2 * k) + 8 >= small
            ? TruncatedSvdExact(matrix, rows, cols, k)
            : TruncatedSvdIterative(matrix, rows, cols, k);
    }

    /// <summary>Thin QR of the taller orientation, then the SVD of the square R factor.</summary>
    public static (double[] US, double[] Vt) TruncatedSvdExact(double[] matrix, int rows, int cols, int k)
    {
        var m = Matrix<double>.Build.DenseOfRowMajor(rows, cols, matrix);
        bool wide = rows < cols;
        var qr = (wide ? m.Transpose() : m).QR(QRMethod.Thin);
        var svd = qr.R.Svd(true);
        var left = qr.Q * svd.U; // the tall orientation = left·Σ·svd.VT
        return wide
            ? Truncate(svd.VT.Transpose(), svd.S, left.Transpose(), k)
            : Truncate(left, svd.S, svd.VT, k);
    }

    /// <summary>Rank-k truncated SVD of left·right, left [rows, inner], right [inner, cols], without forming the product when inner is small.</summary>
    public static (double[] US, double[] Vt) TruncatedSvdLowRank(double[] left, double[] right, int rows, int cols, int inner, int k)
    {
        var l = Matrix<double>.Build.DenseOfRowMajor(rows, inner, left);
        var r = Matrix<double>.Build.DenseOfRowMajor(inner, cols, right);
        if (inner >= rows || inner >= cols)
        {
            return TruncatedSvd((l * r).ToRowMajorArray(), rows, cols, k);
        }

        var qrLeft = l.QR(QRMethod.Thin);
        var qrRight = r.Transpose().QR(QRMethod.Thin);
        var svd = (qrLeft.R * qrRight.R.Transpose()).Svd(true);
        return Truncate(qrLeft.Q * svd.U, svd.S, svd.VT * qrRight.Q.Transpose(), k);
    }

    /// <summary>Block subspace iteration on MᵀM, then Rayleigh–Ritz (see the file header).</summary>
    public static (double[] US, double[] Vt) TruncatedSvdIterative(double[] matrix, int rows, int cols, int k)
    {
        int b = Math.Min((2 * k) + 8, Math.Min(rows, cols));
        var m = Array.ConvertAll(matrix, v => (float)v);
        var rng = new Random(0x5EED);
        var q = new double[(long)b * cols]; // the basis, one row per vector
        for (long i = 0; i < q.Length; i++)
        {
            q[i] = (rng.NextDouble() * 2) - 1;
        }

        Orthonormalize(q, b, cols, rng);
        var qf = new float[q.Length];
        var y = new float[(long)rows * b];
        var z = new float[(long)b * cols];
        double[] previous = [];
        for (int iteration = 0; iteration < MaxIterations; iteration++)
        {
            Narrow(q, qf);
            Gemm.Multiply(false, true, rows, b, cols, 1f, m, qf, 0f, y);  // Y = M·Q        [rows, b]
            if (iteration % 2 == 1)
            {
                var (values, _) = RitzPairs(y, rows, b);
                if (previous.Length != 0 && values.Take(k).Select((v, j) => Math.Abs(v - previous[j]) <= (Tolerance * v) + (1e-12 * values[0])).All(c => c))
                {
                    break;
                }

                previous = values;
            }

            Gemm.Multiply(true, false, b, cols, rows, 1f, y, m, 0f, z);    // Zᵀ = Yᵀ·M = (MᵀY)ᵀ [b, cols]
            for (long i = 0; i < q.Length; i++)
            {
                q[i] = z[i];
            }

            Orthonormalize(q, b, cols, rng);
        }

        Narrow(q, qf);
        Gemm.Multiply(false, true, rows, b, cols, 1f, m, qf, 0f, y);
        var (_, w) = RitzPairs(y, rows, b);
        var us = new double[(long)rows * k];
        var vt = new double[(long)k * cols];
        for (int j = 0; j < Math.Min(k, b); j++)
        {
            for (int i = 0; i < b; i++)
            {
                double wij = w[i, j];
                for (int p = 0; p < cols; p++)
                {
                    vt[((long)j * cols) + p] += wij * q[((long)i * cols) + p];
                }

                for (int r = 0; r < rows; r++)
                {
                    us[((long)r * k) + j] += wij * y[((long)r * b) + i];
                }
            }
        }

        return (us, vt);
    }

    /// <summary>Clamps both factors to [−hi, hi] with hi the q-quantile of all their entries (torch.quantile, linear).</summary>
    public static void ClampToQuantile(double[] us, double[] vt, double q)
    {
        double hi = Quantile([.. us, .. vt], q), lo = -hi;
        foreach (var values in new[] { us, vt })
        {
            for (long i = 0; i < values.Length; i++)
            {
                values[i] = Math.Min(Math.Max(values[i], lo), hi); // torch.clamp: the upper bound wins when lo > hi
            }
        }
    }

    /// <summary>torch.quantile(values, q) with linear interpolation between the sorted values at q·(n − 1).</summary>
    public static double Quantile(double[] values, double q)
    {
        var sorted = (double[])values.Clone();
        Array.Sort(sorted);
        double position = q * (sorted.Length - 1);
        int below = (int)Math.Floor(position);
        int above = Math.Min(below + 1, sorted.Length - 1);
        return sorted[below] + ((position - below) * (sorted[above] - sorted[below]));
    }

    /// <summary>The k largest singular triplets of u·diag(s)·vt as (U·Σ, Vᵀ), zero-padded to k.</summary>
    private static (double[] US, double[] Vt) Truncate(Matrix<double> u, Vector<double> s, Matrix<double> vt, int k)
    {
        int rows = u.RowCount, cols = vt.ColumnCount;
        var order = Enumerable.Range(0, s.Count).OrderByDescending(j => s[j]).ThenBy(j => j).Take(k).ToArray();
        var us = new double[(long)rows * k];
        var v = new double[(long)k * cols];
        for (int j = 0; j < order.Length; j++)
        {
            int src = order[j];
            for (int i = 0; i < rows; i++)
            {
                us[((long)i * k) + j] = u[i, src] * s[src];
            }

            for (int p = 0; p < cols; p++)
            {
                v[((long)j * cols) + p] = vt[src, p];
            }
        }

        return (us, v);
    }

    /// <summary>Eigenpairs of YᵀY (Y [rows, b], fp32) in decreasing order: the squared Ritz values and their vectors (columns).</summary>
    private static (double[] Values, Matrix<double> Vectors) RitzPairs(float[] y, int rows, int b)
    {
        var h = Matrix<double>.Build.Dense(b, b);
        for (int i = 0; i < b; i++)
        {
            for (int j = i; j < b; j++)
            {
                double sum = 0;
                for (int r = 0; r < rows; r++)
                {
                    sum += (double)y[((long)r * b) + i] * y[((long)r * b) + j];
                }

                h[i, j] = sum;
                h[j, i] = sum;
            }
        }

        var evd = h.Evd(Symmetricity.Symmetric);
        var order = Enumerable.Range(0, b).OrderByDescending(j => evd.EigenValues[j].Real).ThenBy(j => j).ToArray();
        var vectors = Matrix<double>.Build.Dense(b, b, (i, j) => evd.EigenVectors[i, order[j]]);
        return (order.Select(j => Math.Max(0, evd.EigenValues[j].Real)).ToArray(), vectors);
    }

    /// <summary>Modified Gram–Schmidt, twice, over the rows of v [count, length]; a row that vanishes is replaced by a fresh random one.</summary>
    private static void Orthonormalize(double[] v, int count, int length, Random rng)
    {
        for (int i = 0; i < count; i++)
        {
            var row = v.AsSpan(i * length, length);
            double original = Norm(row);
            for (int pass = 0; pass < 2; pass++)
            {
                for (int j = 0; j < i; j++)
                {
                    var other = v.AsSpan(j * length, length);
                    double dot = 0;
                    for (int p = 0; p < length; p++)
                    {
                        dot += row[p] * other[p];
                    }

                    for (int p = 0; p < length; p++)
                    {
                        row[p] -= dot * other[p];
                    }
                }
            }

            double norm = Norm(row);
            if (!(norm > 1e-10 * original) || norm == 0)
            {
                for (int p = 0; p < length; p++)
                {
                    row[p] = (rng.NextDouble() * 2) - 1;
                }

                i--; // orthogonalise the replacement against the earlier rows again
                continue;
            }

            for (int p = 0; p < length; p++)
            {
                row[p] /= norm;
            }
        }
    }

    private static double Norm(ReadOnlySpan<double> v)
    {
        double sum = 0;
        foreach (double x in v)
        {
            sum += x * x;
        }

        return Math.Sqrt(sum);
    }

    private static void Narrow(double[] source, float[] destination)
    {
        for (long i = 0; i < source.Length; i++)
        {
            destination[i] = (float)source[i];
        }
    }
}
