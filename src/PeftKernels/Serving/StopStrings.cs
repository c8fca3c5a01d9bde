// OpenAI's `stop`: up to four strings; the text ends right before the first one that appears, which is
// not returned. While streaming, text is held back as long as its end could still be the start of a
// stop string (the longest suffix of the pending text that is a proper prefix of some stop string), so
// no stop string ever reaches the client in pieces.
namespace PeftKernels.Serving;

/// <summary>Finds OpenAI stop strings in streamed text, holding back text that could still become one.</summary>
public sealed class StopStrings
{
    /// <summary>Most stop strings a request may give (OpenAI's limit).</summary>
    public const int MaxCount = 4;

    private readonly string[] stops;
    private string pending = "";

    /// <summary>A matcher for <paramref name="stops"/> (none: text passes straight through).</summary>
    /// <exception cref="ArgumentException">More than <see cref="MaxCount"/> strings, or an empty one.</exception>
    public StopStrings(IReadOnlyList<string>? stops)
    {
        this.stops = [.. stops ?? []];
        if (this.stops.Length > MaxCount)
        {
            throw new ArgumentException($"stop: at most {MaxCount} stop strings; got {this.stops.Length}.", nameof(stops));
        }

        if (this.stops.Any(string.IsNullOrEmpty))
        {
            throw new ArgumentException("stop: a stop string must not be empty.", nameof(stops));
        }
    }

    /// <summary>True once a stop string was found (later text is ignored).</summary>
    public bool Matched { get; private set; }

    /// <summary>Adds <paramref name="text"/>; returns what may be sent now (up to a stop string, or what cannot start one).</summary>
    public string Push(string text)
    {
        if (Matched)
        {
            return "";
        }

        pending += text;
        if (stops.Length == 0)
        {
            string all = pending;
            pending = "";
            return all;
        }

        int first = -1;
        foreach (string s in stops)
        {
            int at = pending.IndexOf(s, StringComparison.Ordinal);
            if (at >= 0 && (first < 0 || at < first))
            {
                first = at;
            }
        }

        if (first >= 0)
        {
            Matched = true;
            string before = pending[..first];
            pending = "";
            return before;
        }

        int hold = 0;
        foreach (string s in stops)
        {
            for (int k = Math.Min(s.Length - 1, pending.Length); k > hold; k--)
            {
                if (pending.AsSpan(pending.Length - k).SequenceEqual(s.AsSpan(0, k)))
                {
                    hold = k;
                    break;
                }
            }
        }

        string ready = pending[..^hold];
        pending = pending[^hold..];
        return ready;
    }

    /// <summary>The held-back text when generation ends without a stop string (empty after a match).</summary>
    public string Flush()
    {
        string rest = Matched ? "" : pending;
        pending = "";
        return rest;
    }
}
