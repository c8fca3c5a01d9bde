// Differentiable ops. Each builds its output and, when an input requires grad and the tape
// is recording, the backward closure that pushes output.Grad into its inputs' Grad. The math
// lives in the kernels (PeftKernels.Kernels.Cpu); these functions own tensors, save what
// backward needs and never re-implement a kernel.
//   Embedding     y[t, :] = W[ids[t], :]                  dW[ids[t], :] += dy[t, :]
//   RmsNorm       y = w ⊙ x·rstd                          (RmsNorm kernel)
//   Rope          y = x ⊙ cos + rotate_half(x) ⊙ sin       dx = rotation by −angle
//   SwiGlu        y = silu(gate) ⊙ up
//   Add           y = a + b                               da = db = dy
//   ScaleColumns  y = x ⊙ l (l broadcast over rows)       dx = dy ⊙ l, dl = Σ_rows dy ⊙ x (Ia3 kernel)
//   Attention     causal GQA, flash style (only lse is saved for backward)
//   CrossEntropy  mean over labels ≠ −100 of lse − logit[label]
using System.Numerics.Tensors;
using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Nn;

/// <summary>Differentiable tensor ops over the CPU kernels (and the GPU kernels for tensors on an accelerator).</summary>
public static partial class Functional
{
    /// <summary>Rows of <paramref name="weight"/> [vocab, dim] selected by <paramref name="ids"/>: [ids.Length, dim].</summary>
    public static Tensor Embedding(ReadOnlySpan<int> ids, Tensor weight)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.Shape.Length != 2)
        {
            throw new ArgumentException($"embedding weight must be 2-D [vocab, dim]; got [{string.Join(", ", weight.Shape)}].", nameof(weight));
        }

        if (weight.Device.IsGpu)
        {
            return EmbeddingOnDevice(ids, weight);
        }

        int vocab = weight.Shape[0], dim = weight.Shape[1];
        var y = new float[(long)ids.Length * dim];
        for (int t = 0; t < ids.Length; t++)
        {
            int id = ids[t];
            if ((uint)id >= (uint)vocab)
            {
                throw new ArgumentOutOfRangeException(nameof(ids), $"token id {id} at position {t} is outside the vocabulary [0, {vocab}).");
            }

            var row = y.AsSpan(t * dim, dim);
            switch (weight.DType)
            {
                case TensorDType.F32:
                    weight.Data.AsSpan(id * dim, dim).CopyTo(row);
                    break;
                case TensorDType.F16:
                    System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(weight.F16Values.AsSpan(id * dim, dim), row);
                    break;
                case TensorDType.BF16:
                    var bits = weight.Bf16Bits.AsSpan(id * dim, dim);
                    for (int j = 0; j < dim; j++)
                    {
                        row[j] = Bf16.ToSingle(bits[j]);
                    }

                    break;
                default:
                    throw new NotSupportedException($"embedding weight of dtype {weight.DType} is not supported (F32 or BF16).");
            }
        }

        var output = new Tensor(y, ids.Length, dim);
        if (Tape.ShouldRecord(weight))
        {
            var saved = ids.ToArray();
            Tape.Record(output, () =>
            {
                var dw = weight.GradOrCreate();
                var dy = output.Grad!;
                for (int t = 0; t < saved.Length; t++)
                {
                    var target = dw.AsSpan(saved[t] * dim, dim);
                    TensorPrimitives.Add(target, dy.AsSpan(t * dim, dim), target);
                }
            });
        }

        return output;
    }

    /// <summary>RMSNorm over the last dimension: y = weight ⊙ x / sqrt(mean(x²) + eps).</summary>
    public static Tensor RmsNorm(Tensor x, Tensor weight, float eps, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(weight);
        int dim = x.Columns, n = x.Rows;
        if (weight.Count != dim)
        {
            throw new ArgumentException($"RMSNorm weight has {weight.Count} elements; the input's last dimension is {dim}.", nameof(weight));
        }

        if (x.Device.IsGpu)
        {
            return RmsNormOnDevice(x, weight, eps);
        }

        var y = GC.AllocateUninitializedArray<float>(checked((int)x.Count));
        var rstd = new float[n];
        Kernels.Cpu.RmsNorm.Forward(x.Data, weight.Data, eps, y, rstd, n, dim, options);
        var output = new Tensor(y, x.Shape);
        if (Tape.ShouldRecord(x, weight))
        {
            Tape.Record(output, () =>
            {
                var dy = output.Grad!;
                float[] dw = weight.RequiresGrad ? new float[dim] : [];
                if (x.RequiresGrad)
                {
                    Grad.Accumulate(x, dx => Kernels.Cpu.RmsNorm.Backward(dy, x.Data, weight.Data, rstd, dx, dw, n, dim, options));
                }
                else
                {
                    Kernels.Cpu.RmsNorm.Backward(dy, x.Data, weight.Data, rstd, [], dw, n, dim, options);
                }

                if (weight.RequiresGrad)
                {
                    Grad.Add(weight, dw);
                }
            });
        }

        return output;
    }

    /// <summary>Rotary embedding (rotate-half) of x [tokens, heads·headDim]; token t has position positions[t].</summary>
    public static Tensor Rope(Tensor x, int[] positions, float[] invFreq, int heads, int headDim, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(positions);
        ArgumentNullException.ThrowIfNull(invFreq);
        int n = positions.Length;
        if (x.Count != (long)n * heads * headDim)
        {
            throw new ArgumentException($"RoPE input has shape [{string.Join(", ", x.Shape)}]; expected {n} tokens × {heads} heads × {headDim}.", nameof(x));
        }

        if (x.Device.IsGpu)
        {
            return RopeOnDevice(x, positions, invFreq, heads, headDim);
        }

        var y = GC.AllocateUninitializedArray<float>(checked((int)x.Count));
        Kernels.Cpu.Rope.Forward(x.Data, positions, invFreq, y, n, heads, headDim, options);
        var output = new Tensor(y, x.Shape);
        if (Tape.ShouldRecord(x))
        {
            Tape.Record(output, () => Grad.Accumulate(x, dx => Kernels.Cpu.Rope.Backward(output.Grad!, positions, invFreq, dx, n, heads, headDim, options)));
        }

        return output;
    }

    /// <summary>silu(gate) ⊙ up, element-wise.</summary>
    public static Tensor SwiGlu(Tensor gate, Tensor up, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(gate);
        ArgumentNullException.ThrowIfNull(up);
        SameShape(gate, up, "gate", "up");
        if (gate.Device.IsGpu)
        {
            return SwiGluOnDevice(gate, up);
        }

        var y = GC.AllocateUninitializedArray<float>(checked((int)gate.Count));
        Kernels.Cpu.SwiGlu.Forward(gate.Data, up.Data, y, options);
        var output = new Tensor(y, gate.Shape);
        if (Tape.ShouldRecord(gate, up))
        {
            Tape.Record(output, () =>
            {
                var dy = output.Grad!;
                var dgate = GC.AllocateUninitializedArray<float>(y.Length);
                var dup = GC.AllocateUninitializedArray<float>(y.Length);
                Kernels.Cpu.SwiGlu.Backward(dy, gate.Data, up.Data, dgate, dup, options);
                Grad.AddOwned(gate, dgate);
                Grad.AddOwned(up, dup);
            });
        }

        return output;
    }

    /// <summary>a + b, element-wise (residual connections).</summary>
    public static Tensor Add(Tensor a, Tensor b)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        SameShape(a, b, "a", "b");
        if (a.Device.IsGpu)
        {
            return AddOnDevice(a, b);
        }

        var y = GC.AllocateUninitializedArray<float>(checked((int)a.Count));
        TensorPrimitives.Add(a.Data, b.Data, y);
        var output = new Tensor(y, a.Shape);
        if (Tape.ShouldRecord(a, b))
        {
            Tape.Record(output, () =>
            {
                if (a.RequiresGrad)
                {
                    Grad.Add(a, output.Grad!);
                }

                if (b.RequiresGrad)
                {
                    Grad.Add(b, output.Grad!);
                }
            });
        }

        return output;
    }

    /// <summary>
    /// y[i, j] = x[i, j] · l[j] over the last dimension of <paramref name="x"/> (IA³ scaling): <paramref name="l"/> holds one entry
    /// per column, in any shape ([f], [f, 1], [1, f]).
    /// </summary>
    public static Tensor ScaleColumns(Tensor x, Tensor l, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(l);
        int features = x.Columns, n = x.Rows;
        if (l.Count != features)
        {
            throw new ArgumentException($"the scale has shape [{string.Join(", ", l.Shape)}] ({l.Count} entries); x [{string.Join(", ", x.Shape)}] needs one per column ({features}).", nameof(l));
        }

        if (x.Device.IsGpu)
        {
            return ScaleColumnsOnDevice(x, l);
        }

        var y = GC.AllocateUninitializedArray<float>(checked((int)x.Count));
        Ia3.ScaleColumns(x.Data, l.Data, y, n, features, options);
        var output = new Tensor(y, x.Shape);
        if (Tape.ShouldRecord(x, l))
        {
            Tape.Record(output, () =>
            {
                var dy = output.Grad!;
                float[] dx = x.RequiresGrad ? GC.AllocateUninitializedArray<float>(y.Length) : [];
                float[] dl = l.RequiresGrad ? GC.AllocateUninitializedArray<float>(features) : [];
                Ia3.ScaleColumnsBackward(dy, dl.Length != 0 ? x.Data : [], l.Data, dx, dl, n, features, options);
                Grad.AddOwned(x, dx);
                Grad.AddOwned(l, dl);
            });
        }

        return output;
    }

    private static void SameShape(Tensor a, Tensor b, string nameA, string nameB)
    {
        if (!a.Shape.AsSpan().SequenceEqual(b.Shape))
        {
            throw new ArgumentException($"{nameA} has shape [{string.Join(", ", a.Shape)}] but {nameB} has [{string.Join(", ", b.Shape)}]; they must match.", nameB);
        }
    }
}
