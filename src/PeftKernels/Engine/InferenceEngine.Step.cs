// One engine step: intake, planning under the token budget with KV block reservation and
// preemption, the batched forward, sampling and finishing (the order is in InferenceEngine.cs).
namespace PeftKernels.Engine;

public sealed partial class InferenceEngine
{
    /// <summary>Runs one step (thread-safe: steps run one at a time). Returns false when there was nothing to do.</summary>
    public bool Step()
    {
        lock (stepGate)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            Intake();
            RefreshAdapterTable();
            Plan();
            if (batch.Rows == 0)
            {
                return false;
            }

            ReadOnlySpan<float> logits;
            try
            {
                try
                {
                    RunScalingPass();
                    logits = deviceForward != null ? deviceForward.Run(batch, table) : forward!.Run(batch, table);
                }
                finally
                {
                    deviceForward?.EndStep();
                }
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                foreach (var s in planned)
                {
                    running.Remove(s);
                    Finish(s, FinishReason.Error, $"the forward pass failed: {ex.Message}");
                }

                throw;
            }

            Stats.Steps++;
            Stats.RowsComputed += batch.Rows;
            int vocab = model.Config.VocabSize;
            for (int g = 0; g < planned.Count; g++)
            {
                var s = planned[g];
                s.Computed = batch.Positions[batch.SequenceStart[g + 1] - 1] + 1;
                if (batch.LogitRow[g] < 0)
                {
                    continue;
                }

                int token;
                ObserveLogits?.Invoke(s, logits.Slice(batch.LogitRow[g] * vocab, vocab));
                try
                {
                    token = s.Sampler.Next(logits.Slice(batch.LogitRow[g] * vocab, vocab));
                }
                catch (InvalidDataException ex)
                {
                    running.Remove(s);
                    Finish(s, FinishReason.Error, $"sequence {s.Id} at position {s.Length - 1}: {ex.Message}");
                    continue;
                }

                s.AddToken(token);
                Stats.TokensGenerated++;
                if (s.AdapterLease is AdapterLease lease)
                {
                    Adapters.RecordTokens(lease, 1);
                }

                var reason = s.Sampling.StopTokenIds?.Contains(token) == true ? FinishReason.Stop
                    : s.OutputCount >= s.Sampling.MaxTokens || s.Length >= MaxSequenceLength ? FinishReason.Length
                    : FinishReason.None;
                s.TokenGenerated?.Invoke(s, token);
                if (reason != FinishReason.None)
                {
                    running.Remove(s);
                    Finish(s, reason);
                }
            }

            return true;
        }
    }

    /// <summary>New requests join the queue; cancelled ones finish.</summary>
    private void Intake()
    {
        while (incoming.TryDequeue(out var s))
        {
            if (s.Sampling.MaxTokens == 0)
            {
                Finish(s, FinishReason.Length);
                continue;
            }

            waiting.AddLast(s);
        }

        for (int i = running.Count - 1; i >= 0; i--)
        {
            if (running[i].CancelRequested)
            {
                var s = running[i];
                running.RemoveAt(i);
                Finish(s, FinishReason.Cancelled);
            }
        }

        for (var node = waiting.First; node != null;)
        {
            var next = node.Next;
            if (node.Value.CancelRequested)
            {
                waiting.Remove(node);
                Finish(node.Value, FinishReason.Cancelled);
            }

            node = next;
        }
    }

    /// <summary>Fills the batch: decode rows, then prompt chunks of running sequences, then new sequences.</summary>
    private void Plan()
    {
        batch.Clear();
        planned.Clear();
        int budget = Options.MaxBatchTokens;

        // Decode rows (one each), oldest first; a sequence that cannot get a block preempts the newest unplanned one.
        for (int i = 0; i < running.Count && budget > 0; i++)
        {
            var s = running[i];
            if (s.Length - s.Computed != 1)
            {
                continue;
            }

            while (!TryReserve(s, s.TokenAt(s.Computed)))
            {
                if (!PreemptNewestUnplanned(s))
                {
                    break;
                }
            }

            if (s.Cache == null)
            {
                i--; // s itself was preempted (removed from running)
                continue;
            }

            if (s.Cache.Length != s.Computed + 1)
            {
                continue; // no block could be freed for it (cannot happen while s itself is a preemption candidate; kept as a guard)
            }

            AddGroup(s, 1);
            budget--;
        }

        // Prompt chunks of running sequences, then new sequences.
        for (int i = 0; i < running.Count && budget > 0; i++)
        {
            var s = running[i];
            if (s.Length - s.Computed > 1 && !planned.Contains(s))
            {
                budget -= Chunk(s, budget);
            }
        }

        while (budget > 0 && running.Count < Options.MaxRunningSequences && waiting.First is { } node)
        {
            var s = node.Value;
            var admitted = Admit(s);
            if (admitted == Admission.NoRoom)
            {
                break;
            }

            waiting.RemoveFirst();
            if (admitted == Admission.Started)
            {
                running.Add(s);
                budget -= Chunk(s, budget);
            }
        }

        // Nothing could be planned although sequences run: the pool cannot hold even one of them.
        if (batch.Rows == 0 && running.Count > 0)
        {
            var s = running[0];
            running.RemoveAt(0);
            Finish(s, FinishReason.Error, $"the KV cache ({Pool.BlockCount} blocks of {Pool.BlockSize} positions) cannot hold sequence {s.Id} at {s.Length} positions; "
                + "raise EngineOptions.KvBlocks or lower the sequence length.");
        }
    }

    private enum Admission
    {
        Started,
        NoRoom,
        Failed,
    }

    /// <summary>Preempts the newest running sequence not planned in this step (possibly <paramref name="asking"/> itself); true when another one made room.</summary>
    private bool PreemptNewestUnplanned(EngineSequence asking)
    {
        for (int i = running.Count - 1; i >= 0; i--)
        {
            var victim = running[i];
            if (planned.Contains(victim))
            {
                continue;
            }

            ReleaseCaches(victim);
            victim.Computed = 0;
            running.RemoveAt(i);
            waiting.AddFirst(victim);
            Stats.Preemptions++;
            return !ReferenceEquals(victim, asking);
        }

        return false;
    }

    /// <summary>Reserves up to <paramref name="budget"/> of <paramref name="s"/>'s uncomputed positions and plans them; returns the rows planned.</summary>
    private int Chunk(EngineSequence s, int budget)
    {
        int want = Math.Min(s.Length - s.Computed, budget), got = 0;
        while (got < want && TryReserve(s, s.TokenAt(s.Computed + got)))
        {
            got++;
        }

        if (got > 0)
        {
            AddGroup(s, got);
        }

        return got;
    }

    private void AddGroup(EngineSequence s, int rows)
    {
        Span<int> tokens = rows <= 256 ? stackalloc int[rows] : new int[rows];
        for (int i = 0; i < rows; i++)
        {
            tokens[i] = s.TokenAt(s.Computed + i);
        }

        batch.Add(s.Cache!, tokens, s.Computed, s.Slot, s.Computed + rows == s.Length);
        planned.Add(s);
    }

    /// <summary>Gives a queued sequence its adapter and a KV block table (sharing a cached prompt prefix).</summary>
    private Admission Admit(EngineSequence s)
    {
        if (s.AdapterLease == null && s.Request.Adapter != null)
        {
            try
            {
                s.AdapterLease = AcquireAdapter(s.Request.Adapter);
            }
            catch (Exception ex) when (ex is InvalidOperationException or KeyNotFoundException or IOException or InvalidDataException or ArgumentException or NotSupportedException)
            {
                Finish(s, FinishReason.Error, $"adapter '{s.Request.Adapter}': {ex.Message}");
                return Admission.Failed;
            }

            RefreshAdapterTable();
        }

        s.Slot = SlotOf(s.AdapterLease);
        s.Virtual = (s.AdapterLease as AdapterLease)?.Adapter.Virtual;
        if (VirtualOverflow(s))
        {
            return Admission.Failed;
        }

        CreateCaches(s, Math.Min(MaxSequenceLength, s.Request.PromptTokens.Length + s.Sampling.MaxTokens));
        s.Computed = 0;
        if (Options.PrefixSharing && s.XLora == null)
        {
            var tokens = new int[s.Length];
            for (int i = 0; i < tokens.Length; i++)
            {
                tokens[i] = s.TokenAt(i);
            }

            int cached = s.Cache!.SharePrefix(tokens);
            s.Computed = cached;
            cached -= s.Virtual?.Count ?? 0;
            if (s.OutputCount == 0 && cached > 0)
            {
                s.CachedPromptTokens = cached;
                Stats.CachedPromptTokens += cached;
            }
        }

        if (!WriteVirtualPositions(s))
        {
            ReleaseCaches(s);
            s.Computed = 0;
            return Admission.NoRoom;
        }

        // Shared blocks are full, so the next position needs a free block (two for X-LoRA's two caches).
        if (Pool.FreeBlocks < BlocksToStart(s))
        {
            ReleaseCaches(s);
            s.Computed = 0;
            return Admission.NoRoom;
        }

        return Admission.Started;
    }
}
