// Shape checks of causal grouped-query attention, called by the CPU kernels (Attention) and the GPU
// launchers (AttentionKernels). Shapes: q, o, dO, dq [batch, queryLength, heads, headDim];
// k, v, dk, dv [batch, keyLength, kvHeads, headDim]; lse [batch, heads, queryLength]; heads a multiple
// of kvHeads; keyLength ≥ queryLength (the queries are the last queryLength key positions); scale finite.
namespace PeftKernels.Kernels;

/// <summary>Argument checks of attention, shared by the CPU kernels and the GPU launchers.</summary>
internal static class AttentionShapes
{
    public static void Dims(int batch, int queryLength, int keyLength, int heads, int kvHeads, int headDim, float scale)
    {
        Check.NonNegative(batch, "batch");
        Check.NonNegative(queryLength, "queryLength");
        Check.NonNegative(keyLength, "keyLength");
        Check.Positive(heads, "heads");
        Check.Positive(kvHeads, "kvHeads");
        Check.Positive(headDim, "headDim");
        Check.Require(heads % kvHeads == 0, nameof(kvHeads), $"heads ({heads}) must be a multiple of kvHeads ({kvHeads}).");
        Check.Require(keyLength >= queryLength, nameof(keyLength),
            $"keyLength ({keyLength}) must be >= queryLength ({queryLength}): the queries are the last queryLength key positions.");
        Check.Require(float.IsFinite(scale), nameof(scale), $"scale must be finite, got {scale}.");
    }

    public static void Forward(long q, long k, long v, long o, long lse,
        int batch, int queryLength, int keyLength, int heads, int kvHeads, int headDim, float scale)
    {
        Dims(batch, queryLength, keyLength, heads, kvHeads, headDim, scale);
        ForwardTensors(q, k, v, o, lse, batch, queryLength, keyLength, heads, kvHeads, headDim);
    }

    public static void Backward(long dO, long q, long k, long v, long o, long lse, long dq, long dk, long dv,
        int batch, int queryLength, int keyLength, int heads, int kvHeads, int headDim, float scale)
    {
        Dims(batch, queryLength, keyLength, heads, kvHeads, headDim, scale);
        long query = (long)batch * queryLength * heads * headDim, key = (long)batch * keyLength * kvHeads * headDim;
        Check.Length("dO", dO, query, "batch·queryLength·heads·headDim");
        ForwardTensors(q, k, v, o, lse, batch, queryLength, keyLength, heads, kvHeads, headDim);
        Check.Length("dq", dq, query, "batch·queryLength·heads·headDim");
        Check.Length("dk", dk, key, "batch·keyLength·kvHeads·headDim");
        Check.Length("dv", dv, key, "batch·keyLength·kvHeads·headDim");
    }

    /// <summary>The lengths of the forward's tensors q, k, v, o and lse (the backward reads them all); dims already checked.</summary>
    private static void ForwardTensors(long q, long k, long v, long o, long lse,
        int batch, int queryLength, int keyLength, int heads, int kvHeads, int headDim)
    {
        long query = (long)batch * queryLength * heads * headDim, key = (long)batch * keyLength * kvHeads * headDim;
        Check.Length("q", q, query, "batch·queryLength·heads·headDim");
        Check.Length("k", k, key, "batch·keyLength·kvHeads·headDim");
        Check.Length("v", v, key, "batch·keyLength·kvHeads·headDim");
        Check.Length("o", o, query, "batch·queryLength·heads·headDim");
        Check.Length("lse", lse, (long)batch * heads * queryLength, "batch·heads·queryLength");
    }
}
