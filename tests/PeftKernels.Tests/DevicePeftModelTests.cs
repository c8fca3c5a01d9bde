// PeftModel operations that change a model's weights or adapters on the host while the model lives on
// a device (the ILGPU CPU accelerator of the shared fixture, a one-layer tiny Llama): merge, unmerge,
// merge-and-unload, loading an adapter, and merging after training there. The device must see the
// change (new tensors moved there, fp32 values changed in place uploaded again), and a device copy that
// an optimizer updated must reach the host before a merge reads it.
using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Training;
using Xunit;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class DevicePeftModelTests(GpuFixture gpu)
{
    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    private static float[] Logits(LlamaForCausalLM model)
    {
        using var scope = Tape.NoGrad();
        return (float[])model.Forward(Testing.TinyLlama.Inputs).Data.Clone();
    }

    /// <summary>fp32 through a layer of short dots in another order, and a merged weight rounded once: 1e-4 of the logit range.</summary>
    private static void AssertSame(float[] actual, float[] expected, string what) =>
        TestUtil.AssertClose(actual, expected, 1e-4 * expected.Max(MathF.Abs), 1e-4, what);

    [Fact]
    public void MergeUnmergeAndMergeAndUnloadOnTheAcceleratorKeepTheOutputs()
    {
        var (model, peft) = Testing.TinyLlama.TwoAdapters();
        var cpu = Logits(model);
        model.To(Accel);
        var before = Logits(model);
        AssertSame(before, cpu, "unmerged, accelerator vs cpu");

        peft.Merge();
        AssertSame(Logits(model), cpu, "merged on the accelerator");
        peft.Unmerge();
        AssertSame(Logits(model), cpu, "unmerged again");

        peft.SetAdapter("b");
        model.To(Device.Cpu);
        var cpuB = Logits(model);
        model.To(Accel);
        Assert.True(cpuB.Zip(cpu).Max(p => Math.Abs(p.First - p.Second)) > 1e-2 * cpu.Max(MathF.Abs), "adapter b differs from a");
        var unloaded = (LlamaForCausalLM)peft.MergeAndUnload();
        Assert.All(unloaded.NamedParameters(), p => Assert.Same(Accel, p.Parameter.Device));
        AssertSame(Logits(unloaded), cpuB, "merge_and_unload of b on the accelerator");
    }

    [Fact]
    public void AnAdapterLoadedIntoAModelOnTheAcceleratorRunsThere()
    {
        var (model, peft) = Testing.TinyLlama.TwoAdapters();
        var expected = Logits(model);
        using var folder = new TempFolder();
        peft.SaveAdapter(folder.Path, "a");

        var fresh = Testing.TinyLlama.OneLayer();
        fresh.To(Accel);
        var loaded = new PeftModel(fresh);
        loaded.LoadAdapter(folder.File("a"), "a"); // a non-default adapter is saved in a subfolder of its name, as PEFT does
        Assert.All(fresh.NamedParameters(), p => Assert.Same(Accel, p.Parameter.Device));
        AssertSame(Logits(fresh), expected, "loaded adapter on the accelerator");
    }

    [Fact]
    public void MergeAfterTrainingOnTheAcceleratorUsesTheTrainedValues()
    {
        var (model, peft) = Testing.TinyLlama.TwoAdapters();
        model.To(Accel);
        var initial = Logits(model);
        var trainer = new Trainer(model, _ => (Testing.TinyLlama.Inputs, Testing.TinyLlama.Labels), 1,
            new TrainerOptions { Steps = 2, LearningRate = 5e-2 });
        trainer.Run();
        var trained = Logits(model);
        Assert.True(trained.Zip(initial).Max(p => Math.Abs(p.First - p.Second)) > 1e-3 * initial.Max(MathF.Abs), "training moved the outputs");
        peft.Merge();
        var merged = Logits(model);

        // The merge read A and B after the device steps (a stale host copy would merge the initial adapter).
        AssertSame(merged, trained, "merged after device training");
        model.To(Device.Cpu);
        AssertSame(Logits(model), trained, "the same merged model on the cpu");
    }
}
