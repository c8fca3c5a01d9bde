// The two residual sites of a decoder layer where bottleneck adapters sit
// (docs/formats/bottleneck-adapters.md#sites):
//   a = o_proj(attn(norm1(x))),  h = AttentionSite(x, a)   (default x + a)
//   m = mlp(norm2(h)),           y = OutputSite(h, m)      (default h + m)
// A site sees the sublayer's input (the residual) and its output, one row per token, so it needs
// nothing from the KV cache: cached decoding runs it on the new tokens only. Its parameters are the
// layer's children "attention_adapters" and "output_adapters" (AdapterHub's key names).
using PeftKernels.Nn;
using PeftKernels.Ops;

namespace PeftKernels.Models;

/// <summary>A residual site of a decoder layer: combines the sublayer's input and output (x + a without adapters).</summary>
public abstract class ResidualSite : Module
{
    /// <summary>The site's output for the sublayer input <paramref name="x"/> and output <paramref name="output"/>, both [B·T, hidden].</summary>
    public abstract Tensor Apply(Tensor x, Tensor output, int batch, ForwardContext context);
}

/// <summary>The decoder layer's residual sites.</summary>
public sealed partial class LlamaDecoderLayer
{
    /// <summary>The site after self-attention (AdapterHub's "attention_adapters"); null: h = x + a.</summary>
    public ResidualSite? AttentionSite { get; set; }

    /// <summary>The site after the MLP (AdapterHub's "output_adapters"); null: y = h + m.</summary>
    public ResidualSite? OutputSite { get; set; }

    private Tensor AfterAttention(Tensor x, Tensor a, int batch, ForwardContext context) =>
        AttentionSite?.Apply(x, a, batch, context) ?? Functional.Add(x, a);

    private Tensor AfterMlp(Tensor h, Tensor m, int batch, ForwardContext context) =>
        OutputSite?.Apply(h, m, batch, context) ?? Functional.Add(h, m);

    private IEnumerable<(string Name, Module Module)> SiteChildren()
    {
        if (AttentionSite != null)
        {
            yield return ("attention_adapters", AttentionSite);
        }

        if (OutputSite != null)
        {
            yield return ("output_adapters", OutputSite);
        }
    }
}
