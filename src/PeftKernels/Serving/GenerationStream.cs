// A generation call over the engine as an async stream: submits an EngineRequest, yields text pieces as
// the engine produces tokens (IncrementalDetokenizer, then StopStrings), and ends with the finish reason
// and usage. The engine's TokenGenerated callback (on the engine's thread) only signals; the consumer
// reads the sequence's tokens itself, so a token produced before the callback was attached is not lost.
// A matched stop string cancels the sequence at once (finish "stop"); so does a consumer that stops
// early (an HTTP client that disconnects, a cancelled token, a broken-off await foreach): the finally
// block cancels the sequence, and the engine frees its KV blocks and adapter lease at its next step.
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using PeftKernels.Engine;
using PeftKernels.Text;

namespace PeftKernels.Serving;

/// <summary>Streams one generation from an <see cref="InferenceEngine"/> as text pieces.</summary>
public static class GenerationStream
{
    /// <summary>
    /// Submits <paramref name="request"/> to <paramref name="engine"/> (which someone must be stepping, e.g. an <see cref="EngineHost"/>)
    /// and yields its text; the last update carries the finish reason and usage. Stopping the enumeration early cancels the sequence.
    /// </summary>
    /// <exception cref="ArgumentException">The prompt or a sampling setting is invalid, or there are too many stop strings.</exception>
    /// <exception cref="KeyNotFoundException">The adapter is not known to the engine.</exception>
    /// <exception cref="GenerationFailedException">The engine stopped the sequence with an error.</exception>
    /// <exception cref="OperationCanceledException">The engine was disposed while the sequence ran, or <paramref name="cancellationToken"/> fired.</exception>
    public static IAsyncEnumerable<GenerationUpdate> Run(InferenceEngine engine, ITokenizer tokenizer, GenerationRequest request, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(request);
        var stops = new StopStrings(request.StopStrings); // validated before anything is submitted
        var signal = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite });
        var sequence = engine.Submit(new EngineRequest(request.PromptTokens, request.Adapter, request.Sampling));
        sequence.TokenGenerated = (_, _) => signal.Writer.TryWrite(true);
        sequence.Completion.ContinueWith(_ => signal.Writer.TryWrite(true), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        signal.Writer.TryWrite(true);
        return Read(sequence, tokenizer, request, stops, signal.Reader, cancellationToken);
    }

    /// <summary>Runs <paramref name="request"/> to the end and returns its whole text, finish reason and usage.</summary>
    public static async Task<(string Text, GenerationFinish Finish, GenerationUsage Usage)> CompleteAsync(InferenceEngine engine, ITokenizer tokenizer,
        GenerationRequest request, CancellationToken cancellationToken = default)
    {
        var text = new System.Text.StringBuilder();
        await foreach (var update in Run(engine, tokenizer, request, cancellationToken).ConfigureAwait(false))
        {
            text.Append(update.Text);
            if (update.Finish is { } finish)
            {
                return (text.ToString(), finish, update.Usage!);
            }
        }

        throw new InvalidOperationException("the generation ended without a finish reason.");
    }

    private static async IAsyncEnumerable<GenerationUpdate> Read(EngineSequence sequence, ITokenizer tokenizer, GenerationRequest request, StopStrings stops,
        ChannelReader<bool> signal, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var detokenizer = new IncrementalDetokenizer(tokenizer, request.PromptTokens);
        var stopIds = request.Sampling.StopTokenIds;
        int seen = 0;
        try
        {
            while (true)
            {
                await signal.ReadAsync(cancellationToken).ConfigureAwait(false);
                bool done = sequence.Completion.IsCompleted; // read before the tokens: every token of a finished sequence is then in the copy
                int[] tokens = sequence.Tokens;
                var text = new System.Text.StringBuilder();
                for (; seen < tokens.Length && !stops.Matched; seen++)
                {
                    int token = tokens[seen];
                    if (stopIds?.Contains(token) == true)
                    {
                        continue; // the stop token (EOS) ends the text and is not part of it
                    }

                    text.Append(stops.Push(detokenizer.Push(token)));
                }

                if (stops.Matched)
                {
                    sequence.Cancel();
                    yield return new GenerationUpdate(text.ToString(), seen, GenerationFinish.Stop, new GenerationUsage(request.PromptTokens.Length, seen));
                    yield break;
                }

                if (done)
                {
                    var result = await sequence.Completion.ConfigureAwait(false);
                    switch (result.Finish)
                    {
                        case FinishReason.Error:
                            throw new GenerationFailedException(result.Error ?? "the engine stopped the sequence with an error.");
                        case FinishReason.Cancelled:
                            throw new OperationCanceledException("the engine cancelled the sequence (it is shutting down).");
                    }

                    text.Append(stops.Push(detokenizer.Flush()));
                    if (!stops.Matched)
                    {
                        text.Append(stops.Flush());
                    }

                    var finish = result.Finish == FinishReason.Stop || stops.Matched ? GenerationFinish.Stop : GenerationFinish.Length;
                    yield return new GenerationUpdate(text.ToString(), seen, finish, new GenerationUsage(request.PromptTokens.Length, seen));
                    yield break;
                }

                if (text.Length > 0)
                {
                    yield return new GenerationUpdate(text.ToString(), seen);
                }
            }
        }
        finally
        {
            if (!sequence.Completion.IsCompleted)
            {
                sequence.Cancel();
            }
        }
    }
}
