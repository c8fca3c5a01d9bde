// The device bodies of MixLoRA's routing ops (Ops/MoeRouting.cs has the formulas and the host bodies), through
// MoeRoutingKernels. What each keeps and when it waits (once at the end of the forward body when it staged something,
// once at the end of the backward closure):
//   Softmax          nothing staged (the backward reads the output p)
//   TopKRouting      the choices sel [n, k] are computed on the device and read back once after the forward's wait
//                    (the host groups the tokens by expert); the device copy stays for the backward
//   LoadBalancing    the expert probability sums [L, E] are read back once (the loss is a host scalar, as the
//                    cross-entropy's); the backward uploads the E per-expert factors
//   RoutedSum        each expert's rows and slots (host data, checked first) are uploaded once, kept for the backward
//   ScaleElements    the jitter factors are uploaded, kept for the backward
namespace PeftKernels.Ops;

public static partial class Functional
{
    private static Tensor SoftmaxOnDevice(Tensor z, int n, int e) => OpChecks.OneInputOnDevice(z,
        (acc, x, y) => MoeRoutingKernels.Softmax(acc, x, y, n, e),
        (acc, dy, y, dx) => MoeRoutingKernels.SoftmaxBackward(acc, dy, y, dx, n, e));

    private static TopKRoute TopKRoutingOnDevice(Tensor probs, int n, int e, int k)
    {
        var device = probs.Device;
        var accelerator = device.Accelerator;
        var sel = accelerator.Rent<int>((long)n * k);
        var output = OpChecks.DeviceTensor(device, [n, k]);
        MoeRoutingKernels.TopK(accelerator, probs.View(device), sel.View, output.View(device), n, e, k);
        var selected = n == 0 ? [] : DeviceSync.Download(sel.View); // host value: the chosen experts, to group the tokens by expert
        if (!Tape.ShouldRecord(probs))
        {
            sel.Dispose();
            return new TopKRoute(output, selected);
        }

        Tape.Record(output, () =>
        {
            var dp = DeviceGrad.Buffer(device, probs)!;
            MoeRoutingKernels.TopKBackward(accelerator, output.DeviceGrad, probs.View(device), sel.View, output.View(device), dp.View, n, e, k);
            sel.Dispose();
            DeviceGrad.Give(probs, dp);
        });
        return new TopKRoute(output, selected);
    }

    /// <summary>sums[l·E + j] = Σ_t p_l[t, j] for each routed layer l, computed on the device and read back once.</summary>
    private static float[] ExpertSumsOnDevice(IReadOnlyList<Tensor> probs, int n, int e)
    {
        var device = probs[0].Device;
        var accelerator = device.Accelerator;
        var sums = accelerator.Rent<float>((long)probs.Count * e);
        for (int l = 0; l < probs.Count; l++)
        {
            MoeRoutingKernels.ExpertSums(accelerator, probs[l].View(device), sums.View.SubView(l * e, e), n, e);
        }

        var host = DeviceSync.Download(sums.View); // host value: the expert probability sums of the load-balancing loss
        sums.Dispose();
        return host;
    }

    /// <summary>dp_l[t, j] = g·f[j] for every routed layer that needs a gradient.</summary>
    private static void LoadBalancingBackwardOnDevice(IReadOnlyList<Tensor> probs, float[] f, float g, int n, int e)
    {
        var device = probs[0].Device;
        var accelerator = device.Accelerator;
        var factors = accelerator.Upload(f);
        var grads = new List<(Tensor, DeviceArray<float>?)>();
        foreach (var p in probs.Where(p => p.RequiresGrad))
        {
            var dp = DeviceGrad.Buffer(device, p)!;
            MoeRoutingKernels.ExpertBroadcast(accelerator, factors.View, g, dp.View, n, e);
            grads.Add((p, dp));
        }

        factors.Dispose();
        DeviceGrad.Give([.. grads]);
    }

    private static Tensor RoutedSumOnDevice(IReadOnlyList<Tensor> parts, IReadOnlyList<int[]> rows, IReadOnlyList<int[]> slots, Tensor weights, int n, int c, int k)
    {
        var device = weights.Device;
        var accelerator = device.Accelerator;
        for (int e = 0; e < parts.Count; e++)
        {
            OpChecks.SameDevice(device, parts[e], nameof(parts));
            MoeRoutingKernels.CheckRoutes(rows[e], slots[e], n, k); // the launchers never download them
        }

        var deviceRows = rows.Select(r => Upload(accelerator, r)).ToList();
        var deviceSlots = slots.Select(s => Upload(accelerator, s)).ToList();
        var output = OpChecks.DeviceTensor(device, [n, c]);
        output.View(device).MemSetToZero();
        for (int e = 0; e < parts.Count; e++)
        {
            MoeRoutingKernels.RoutedSum(accelerator, parts[e].View(device), deviceRows[e].View, deviceSlots[e].View, weights.View(device), output.View(device), n, c, k);
        }

        void Free()
        {
            deviceRows.ForEach(b => b.Dispose());
            deviceSlots.ForEach(b => b.Dispose());
        }

        if (!(Tape.IsRecording && (weights.RequiresGrad || parts.Any(p => p.RequiresGrad))))
        {
            Free();
            return output;
        }

        Tape.Record(output, () =>
        {
            var dw = DeviceGrad.Buffer(device, weights);
            dw?.Clear();
            var grads = new List<(Tensor, DeviceArray<float>?)>();
            for (int e = 0; e < parts.Count; e++)
            {
                var dpart = DeviceGrad.Buffer(device, parts[e]);
                MoeRoutingKernels.RoutedSumBackward(accelerator, output.DeviceGrad, parts[e].View(device), deviceRows[e].View, deviceSlots[e].View, weights.View(device),
                    dpart?.View ?? default, dw?.View ?? default, n, c, k);
                grads.Add((parts[e], dpart));
            }

            Free();
            grads.Add((weights, dw));
            DeviceGrad.Give([.. grads]);
        });
        return output;
    }

    private static Tensor ScaleElementsOnDevice(Tensor x, float[] factors)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        var f = accelerator.Rent<float>(factors.Length);
        DeviceSync.Upload<float>(f.View, factors);
        var output = OpChecks.DeviceTensor(device, x.Shape);
        MoeRoutingKernels.ScaleElements(accelerator, x.View(device), f.View, output.View(device));
        if (!Tape.ShouldRecord(x))
        {
            f.Dispose();
            return output;
        }

        Tape.Record(output, () =>
        {
            var dx = DeviceGrad.Buffer(device, x)!;
            MoeRoutingKernels.ScaleElements(accelerator, output.DeviceGrad, f.View, dx.View);
            f.Dispose();
            DeviceGrad.Give(x, dx);
        });
        return output;
    }
}
