// Runs one autograd op on the CPU device and on the shared ILGPU accelerator over the same inputs (fresh trainable
// parameters; on the accelerator they get a device mirror, as a model's parameters do after To(device)), back-
// propagates one seeded output gradient and compares the outputs and every input's gradient. Used by the
// Gpu<Stem>Tests of the round-2 ops (prompt learning, bottleneck, X-LoRA, MixLoRA).
using PeftKernels.Autograd;
using Xunit;

namespace PeftKernels.Tests;

internal static class GpuOpHarness
{
    /// <summary>The op's output and each input's gradient (null when it got none) on <paramref name="device"/>.</summary>
    public static (float[] Y, float[]?[] Grads) Run(Device device, (float[] Data, int[] Shape)[] inputs, Func<Tensor[], Tensor> op, int seed, bool[]? trainable = null)
    {
        var parameters = inputs.Select((input, i) => new Parameter((float[])input.Data.Clone(), input.Shape, trainable?[i] ?? true)).ToArray();
        if (device.IsGpu)
        {
            foreach (var p in parameters)
            {
                p.MoveTo(device);
            }
        }

        Tape.Clear();
        var y = op(parameters);
        var values = (float[])y.Data.Clone();
        if (y.RequiresGrad)
        {
            Tape.Backward(y, TestUtil.Random((int)y.Count, seed));
        }

        return (values, [.. parameters.Select(p => p.Grad == null ? null : (float[])p.Grad.Clone())]);
    }

    /// <summary>Asserts the accelerator's output and gradients equal the CPU's within atol + rtol·|cpu|; returns the CPU's.</summary>
    public static (float[] Y, float[]?[] Grads) AssertSame(Device accelerator, (float[] Data, int[] Shape)[] inputs, Func<Tensor[], Tensor> op, double atol, double rtol,
        string what, bool[]? trainable = null)
    {
        var cpu = Run(Device.Cpu, inputs, op, 91, trainable);
        var gpu = Run(accelerator, inputs, op, 91, trainable);
        TestUtil.AssertClose(gpu.Y, cpu.Y, atol, rtol, $"{what}: output");
        for (int i = 0; i < inputs.Length; i++)
        {
            Assert.Equal(cpu.Grads[i] == null, gpu.Grads[i] == null);
            if (cpu.Grads[i] != null)
            {
                TestUtil.AssertClose(gpu.Grads[i]!, cpu.Grads[i]!, atol, rtol, $"{what}: gradient of input {i}");
            }
        }

        return cpu;
    }

    /// <summary>An input of the given shape with seeded values in (−range, range).</summary>
    public static (float[] Data, int[] Shape) Input(int seed, float range, params int[] shape) => (TestUtil.Random(shape.Aggregate(1, (a, d) => a * d), seed, range), shape);

    /// <summary>The message of the exception <paramref name="action"/> throws.</summary>
    public static string Message<T>(Action action)
        where T : Exception => Assert.ThrowsAny<T>(action).Message;
}
