// X-LoRA requests in the engine (docs/formats/xlora.md#serving). A sequence whose adapter is an X-LoRA one holds two
// paged block tables in the same KV pool: its main cache (the adapted pass) and its scaling-pass cache (the first pass:
// the base model, or every expert at scaling_pass_value), the engine's form of the library's paired caches
// (XLoraModel.Forward), so incremental decoding equals the full two-pass forward. Both caches always hold the same
// positions: TryReserve appends to both or to neither. Neither shares a prefix or publishes its blocks (X-LoRA keys
// and values are not those of the plain prompt), so both need a new block at the same positions and never a
// copy-on-write. A step with X-LoRA rows first runs the scaling pass over those rows alone (their scaling caches,
// BatchForward.RunHidden), turns each group's final hidden states into per-row scalings with its classifier, and then
// runs the main batch, where the X-LoRA groups add their experts mixed by those scalings (BatchForward.XLora.cs). Both
// caches are freed when the sequence finishes, is cancelled or is preempted.
// A model with an X-LoRA attached is refused: the engine serves the base weights and would ignore it.
using PeftKernels.Models;

namespace PeftKernels.Engine;

public sealed partial class InferenceEngine
{
    /// <summary>Refuses a model that has an X-LoRA attached (the engine reads the base weights; X-LoRA folders are served per request).</summary>
    /// <exception cref="NotSupportedException">The model has an X-LoRA attached.</exception>
    internal static void RefuseXLora(LlamaForCausalLM model)
    {
        if (model.XLora != null)
        {
            throw new NotSupportedException("the inference engine serves the base model and would ignore the X-LoRA attached to it; detach it and name the X-LoRA "
                + "folder as a request's adapter (engine.Adapters.Load), which the engine serves per request with its two caches.");
        }
    }

    /// <summary>Creates the caches of a sequence being admitted: one, or for X-LoRA two unshared ones.</summary>
    private void CreateCaches(EngineSequence s, int expectedLength)
    {
        s.XLora = EngineXLora.Of((s.AdapterLease as AdapterLease)?.Adapter);
        if (s.XLora == null)
        {
            var adapter = (s.AdapterLease as AdapterLease)?.Adapter;
            s.Cache = Pool.CreateSequence(expectedLength, KvBlockPool.RootOf(adapter?.Name, adapter?.Version ?? 0));
            return;
        }

        s.Cache = new PagedSequence(Pool, expectedLength) { Unshared = true };
        s.Shadow = new PagedSequence(Pool, expectedLength) { Unshared = true };
    }

    /// <summary>Frees the sequence's caches (both for X-LoRA) and forgets them.</summary>
    private static void ReleaseCaches(EngineSequence s)
    {
        s.Cache?.Free();
        s.Cache = null;
        s.Shadow?.Free();
        s.Shadow = null;
    }

    /// <summary>Reserves the next position of <paramref name="s"/> for <paramref name="token"/> in its cache (and its scaling-pass cache); false, changing nothing, when the pool lacks the blocks.</summary>
    private bool TryReserve(EngineSequence s, int token)
    {
        if (s.Shadow is not { } shadow)
        {
            return s.Cache!.TryAppend(token);
        }

        // Two unshared caches of equal length: each needs a new block exactly at a block boundary, never a copy.
        if (s.Cache!.Length % Pool.BlockSize == 0 && Pool.FreeBlocks < 2)
        {
            return false;
        }

        if (!s.Cache.TryAppend(token) || !shadow.TryAppend(token) || shadow.Length != s.Cache.Length)
        {
            throw new InvalidOperationException($"sequence {s.Id}: its X-LoRA caches went out of step ({s.Cache.Length} and {shadow.Length} positions).");
        }

        return true;
    }

    /// <summary>Free blocks a sequence being admitted needs for its first position.</summary>
    private static int BlocksToStart(EngineSequence s) => s.Shadow != null ? 2 : 1;

    /// <summary>
    /// The scaling pass of the step's X-LoRA groups: their rows through their scaling-pass caches, then each group's per-row
    /// scalings from its classifier, set on the main batch with the group's X-LoRA.
    /// </summary>
    private void RunScalingPass()
    {
        if (!EngineXLora.AnyLoaded)
        {
            return;
        }

        scalingBatch.Clear();
        for (int g = 0; g < planned.Count; g++)
        {
            if (planned[g].XLora is not { } xlora)
            {
                continue;
            }

            int start = batch.SequenceStart[g], end = batch.SequenceStart[g + 1];
            int group = scalingBatch.Add(planned[g].Shadow!, batch.Tokens.AsSpan(start, end - start), batch.Positions[start], -1, wantsLogits: false);
            scalingBatch.XLora[group] = xlora.ScalingPassAdapts ? xlora : null;
        }

        if (scalingBatch.Rows == 0)
        {
            return;
        }

        if (deviceForward != null)
        {
            // On a device the hidden states and the scalings stay there (DeviceBatchForward.XLora.cs): no wait.
            deviceForward.RunHidden(scalingBatch, table);
            for (int g = 0, group = 0; g < planned.Count; g++)
            {
                if (planned[g].XLora is { } x)
                {
                    int first = scalingBatch.SequenceStart[group];
                    batch.XLora[g] = x;
                    deviceForward.Scalings(g, x, first, scalingBatch.SequenceStart[group + 1] - first);
                    group++;
                }
            }

            Stats.ScalingPassRows += scalingBatch.Rows;
            return;
        }

        var hidden = forward!.RunHidden(scalingBatch, table);
        int width = model.Config.HiddenSize, next = 0;
        for (int g = 0; g < planned.Count; g++)
        {
            if (planned[g].XLora is not { } xlora)
            {
                continue;
            }

            int start = scalingBatch.SequenceStart[next], rows = scalingBatch.SequenceStart[next + 1] - start;
            batch.XLora[g] = xlora;
            batch.XLoraScalings[g] = xlora.Scalings(hidden.Slice(start * width, rows * width), rows, Options.Kernel);
            next++;
        }

        Stats.ScalingPassRows += scalingBatch.Rows;
    }
}
