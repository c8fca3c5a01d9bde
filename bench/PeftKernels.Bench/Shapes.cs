// Benchmark shapes and the work of one call at each shape (fp32 = 4 bytes, bf16 = 2 bytes;
// bytes are the minimum traffic: every operand read once, every result written once).
//   GemmShape M×N×K, y[M,N] = x[M,K]·W[N,K]ᵀ:
//     FLOPs = 2·M·N·K                Bytes = 4·M·K + w·K·N + 4·M·N   (w = weight element size)
//   LoraShape n×in×out×r, x[n,in], W[out,in], A[r,in], B[out,r], h[n,r], y/dy[n,out]:
//     Base      FLOPs = 2·n·in·out                    Bytes = 4·(x + W + y)
//     Forward   FLOPs = 2·n·in·out + 2·n·r·(in + out)   Bytes = 4·(x + W + y + A + B + h)
//     Backward  FLOPs = 2·n·in·out + 2·n·r·(2·in + 2·out)
//               Bytes = 4·(dy + x + h + W + A + B  read  +  dx + dA + dB  written)
// The records compare by size, so BenchmarkDotNet lists the shapes small to large.
namespace PeftKernels.Bench;

/// <summary>GEMM shape of x·Wᵀ: x [M, K], W [N, K], y [M, N].</summary>
public sealed record GemmShape(int M, int N, int K) : IComparable
{
    public double Flops => 2.0 * M * N * K;

    public double Bytes(int weightBytes) => (4.0 * M * K) + ((double)weightBytes * K * N) + (4.0 * M * N);

    public int CompareTo(object? obj) => obj is GemmShape o
        ? (Flops, M).CompareTo((o.Flops, o.M))
        : throw new ArgumentException($"Not a {nameof(GemmShape)}.", nameof(obj));

    public override string ToString() => $"{M}x{N}x{K}";
}

/// <summary>LoRA linear shape: n tokens, in → out features, rank r.</summary>
public sealed record LoraShape(int N, int In, int Out, int R) : IComparable
{
    public double BaseFlops => 2.0 * N * In * Out;

    public double ForwardFlops => BaseFlops + (2.0 * N * R * (In + Out));

    public double BackwardFlops => BaseFlops + (2.0 * N * R * ((2.0 * In) + (2.0 * Out)));

    public double BaseBytes => 4.0 * (X + W + Y);

    public double ForwardBytes => 4.0 * (X + W + Y + A + B + H);

    public double BackwardBytes => 4.0 * ((Y + X + H + W + A + B) + (X + A + B));

    private double X => (double)N * In;

    private double W => (double)Out * In;

    private double Y => (double)N * Out;

    private double A => (double)R * In;

    private double B => (double)Out * R;

    private double H => (double)N * R;

    public int CompareTo(object? obj) => obj is LoraShape o
        ? (N, R, In, Out).CompareTo((o.N, o.R, o.In, o.Out))
        : throw new ArgumentException($"Not a {nameof(LoraShape)}.", nameof(obj));

    public override string ToString() => $"{N}x{In}x{Out}x{R}";
}
