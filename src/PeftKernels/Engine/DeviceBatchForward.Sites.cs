// The residual sites of the device engine's forward (the device twin of BatchForward.Sites.cs;
// EngineBottleneck.cs): before x += a, the rows of each sequence whose adapter is a bottleneck one
// (a single adapter, a Stack, an Average or a Fuse) get that setup's contribution added to a:
//   x_s, a_s = copies of the sequence's rows of x and a          [rows, hidden], device tensors
//   Δ_s      = the setup at this site (BottleneckSite.Contribution: the library's device ops, on the
//              adapter's parameters mirrored on the device when it was loaded onto the twin model)
//   a_s     += Δ_s                                                 (AddKernels, on a's sub-view)
// Everything is queued on the stream: no wait (a constant scale or an Average weight is uploaded as a
// one-element temporary, which does not wait either), so a step keeps its one wait. The temporaries are
// device tensors of a DeviceScope that ends with the site, so they go back to the memory pool, and the
// stream orders their next user after this site's kernels. Sequences of other kinds are untouched.
using PeftKernels.Nn;
using FloatView = ILGPU.Runtime.ArrayView1D<float, ILGPU.Stride1D.Dense>;

namespace PeftKernels.Engine;

internal sealed partial class DeviceBatchForward
{
    /// <summary>Bottleneck site launches since creation (tests check that a mixed batch ran them).</summary>
    public long SiteLaunches { get; private set; }

    /// <summary>Adds to <paramref name="output"/>'s rows of every bottleneck sequence its setup's Δ at this site.</summary>
    private void AddSites(int layer, bool attention, FloatView residual, FloatView output, StepBatch batch, AdapterTable table)
    {
        if (!EngineBottleneck.AnyLoaded)
        {
            return;
        }

        for (int s = 0; s < batch.Count; s++)
        {
            if (EngineBottleneck.Of(table.AdapterAt(batch.Slot[s])) is not { } bottleneck)
            {
                continue;
            }

            int rows = batch.SequenceStart[s + 1] - batch.SequenceStart[s];
            var a = RowsOf(output, batch, s, hidden);
            using var scope = DeviceScope.Begin();
            using var noGrad = Tape.NoGrad();
            var delta = bottleneck.Delta(layer, attention, RowTensor(RowsOf(residual, batch, s, hidden), rows, hidden), RowTensor(a, rows, hidden), new ForwardContext());
            if (delta != null)
            {
                AddKernels.Forward(accelerator, a, delta.View(device), a);
                SiteLaunches++;
            }
        }
    }

    /// <summary>A device tensor [rows, width] holding a copy of <paramref name="view"/> (registered with the open scope).</summary>
    private Tensor RowTensor(FloatView view, int rows, int width)
    {
        var tensor = new Tensor(device, accelerator.Rent<float>(view.Length), [rows, width]);
        tensor.View(device).CopyFrom(view);
        return tensor;
    }
}
