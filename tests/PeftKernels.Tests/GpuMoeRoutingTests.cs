// MoeRoutingKernels through MixLoRA's routing ops on the shared ILGPU accelerator against the CPU kernel: the row softmax,
// top-k routing (the same chosen experts, ties to the lower expert, the renormalised weights and their gradient), the
// load-balancing loss pooled over layers (a host scalar on both devices), the routed sum over experts of unequal token
// counts (gradients into every part and into the weights) and the jitter scaling; and the launchers' shape errors with
// the CPU kernel's message.
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;
using PeftKernels.Ops;
using Xunit;
using static PeftKernels.Tests.GpuOpHarness;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuMoeRoutingTests(GpuFixture gpu)
{
    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    [Theory]
    [InlineData(5, 4)]
    [InlineData(1, 1)]
    [InlineData(3, 7)]
    public void SoftmaxMatchesTheCpu(int n, int e)
    {
        AssertSame(Accel, [Input(50, 3f, n, e)], p => Functional.Softmax(p[0]), 1e-6, 1e-5, "softmax");
    }

    [Theory]
    [InlineData(5, 4, 2)]
    [InlineData(1, 3, 3)]
    [InlineData(4, 5, 1)]
    public void TopKRoutingChoosesTheSameExperts(int n, int e, int k)
    {
        var probs = Input(51, 1f, n, e);
        probs.Data = [.. probs.Data.Select(v => 0.1f + Math.Abs(v))];
        int[]? cpuSelected = null, gpuSelected = null;
        AssertSame(Accel, [probs], p =>
        {
            var route = Functional.TopKRouting(p[0], k);
            if (p[0].Device.IsGpu)
            {
                gpuSelected = route.Selected;
            }
            else
            {
                cpuSelected = route.Selected;
            }

            return route.Weights;
        }, 1e-6, 1e-5, "top-k");
        Assert.Equal(cpuSelected, gpuSelected);
    }

    [Fact]
    public void TopKTiesGoToTheLowerExpert()
    {
        int[]? selected = null;
        Run(Accel, [([0.2f, 0.3f, 0.3f, 0.2f], [1, 4])], p =>
        {
            var route = Functional.TopKRouting(p[0], 3);
            selected = route.Selected;
            return route.Weights;
        }, 1);
        Assert.Equal([1, 2, 0], selected!);
    }

    [Fact]
    public void LoadBalancingLossMatchesTheCpu()
    {
        int[][] selected = [[0, 2, 1, 2, 2, 3], [3, 0, 1, 0, 2, 1]];
        var cpu = AssertSame(Accel, [Input(52, 1f, 3, 4), Input(53, 1f, 3, 4)], p => Functional.LoadBalancingLoss(p, selected, 2, 0.05f), 1e-6, 1e-5, "load balancing");
        Assert.Single(cpu.Y);
    }

    [Fact]
    public void RoutedSumMatchesTheCpu()
    {
        // 5 tokens, top-2 over 3 experts: expert 0 gets 3 tokens, expert 1 one, expert 2 two... each part [|rows|, 3].
        int[][] rows = [[0, 2, 4], [1], [1, 3]];
        int[][] slots = [[0, 1, 0], [1], [0, 1]];
        AssertSame(Accel, [Input(54, 1f, 3, 3), Input(55, 1f, 1, 3), Input(56, 1f, 2, 3), Input(57, 1f, 5, 2)],
            p => Functional.RoutedSum(p[..3], rows, slots, p[3], 5), 1e-6, 1e-5, "routed sum");
    }

    [Fact]
    public void ScaleElementsMatchesTheCpu()
    {
        var factors = TestUtil.Random(21, 58, 0.1f).Select(v => 1f + v).ToArray();
        AssertSame(Accel, [Input(59, 1f, 3, 7)], p => Functional.ScaleElements(p[0], factors), 0, 0, "jitter");
    }

    [Fact]
    public void ShapeErrorsHaveTheCpuMessage()
    {
        using var p = gpu.Upload(new float[8]);
        using var sel = gpu.Upload(new int[3]);
        using var w = gpu.Upload(new float[4]);
        string cpu = Message<ArgumentException>(() => MoeRouting.TopK(new float[8], new int[3], new float[4], 2, 4, 2));
        Assert.Equal(cpu, Message<ArgumentException>(() => MoeRoutingKernels.TopK(gpu.Accelerator, p.View, sel.View, w.View, 2, 4, 2)));
        Assert.Contains("sel and w n·k = 2·2", cpu, StringComparison.Ordinal);
        cpu = Message<ArgumentException>(() => MoeRouting.Softmax(new float[8], new float[4], 2, 4));
        Assert.Equal(cpu, Message<ArgumentException>(() => MoeRoutingKernels.Softmax(gpu.Accelerator, p.View, w.View, 2, 4)));
        cpu = Message<ArgumentException>(() => MoeRouting.RoutedSum(new float[4], [0, 1], [0, 9], new float[4], new float[4], 2, 2, 2));
        Assert.Equal(cpu, Message<ArgumentException>(() => MoeRoutingKernels.CheckRoutes([0, 1], [0, 9], 2, 2)));
        Assert.Contains("slot 9 is outside", cpu, StringComparison.Ordinal);
        Assert.Contains("row 1 appears twice", Message<ArgumentException>(() => MoeRoutingKernels.CheckRoutes([1, 0, 1], [0, 0, 1], 2, 2)), StringComparison.Ordinal);
    }
}
