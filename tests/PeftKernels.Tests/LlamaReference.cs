using PeftKernels.Models;

namespace PeftKernels.Tests;

/// <summary>
/// A hand-written double-precision Llama forward (docs/formats/llama-checkpoints.md#forward), straight from the formulas:
/// no kernels, no tiling, no online softmax. Weights are read from a model's parameters
/// (widened or dequantized to double); the named LoRA adapters each add s·((x·Aᵀ)·Bᵀ + bias_B),
/// and on the embedding s·A[:, id]ᵀ·Bᵀ. A DoRA adapter adds PEFT's (c − 1)⊙(x·Wᵀ) + c⊙s·(x·Aᵀ)·Bᵀ
/// with c = m / ‖W + s·B·A‖ (so alone: c⊙(x·Wᵀ + s·x·Aᵀ·Bᵀ) + b). IA³ vectors scale the Linear's
/// input ([1, in]) before everything and its output ([out, 1]) after everything.
/// </summary>
internal static class LlamaReference
{
    public static double[] Logits(LlamaForCausalLM model, int[] tokens, bool withLora = false) =>
        Logits(model, tokens, withLora ? ["default"] : []);

    /// <summary>Logits with the named adapters' branches summed (LoRA on Linears, with lora_B bias, and on the embedding).</summary>
    public static double[] Logits(LlamaForCausalLM model, int[] tokens, string[] adapters)
    {
        var c = model.Config;
        var p = model.NamedParameters().ToDictionary(e => e.Name, e => e.Parameter);
        double[] W(string name) => p[name].ToFloat32().Select(v => (double)v).ToArray();
        int T = tokens.Length, H = c.HiddenSize, hd = c.HeadDim, nh = c.NumAttentionHeads, nkv = c.NumKeyValueHeads, I = c.IntermediateSize;
        var embed = W("model.embed_tokens.weight");
        var x = new double[T, H];
        for (int t = 0; t < T; t++)
        {
            for (int j = 0; j < H; j++)
            {
                x[t, j] = embed[(tokens[t] * H) + j];
            }
        }

        foreach (string adapterName in adapters.Where(n => p.ContainsKey($"model.embed_tokens.lora_embedding_A.{n}")))
        {
            var a = W($"model.embed_tokens.lora_embedding_A.{adapterName}");
            var bb = W($"model.embed_tokens.lora_embedding_B.{adapterName}");
            var adapter = Peft.Lora.Adapters(model, adapterName).First(e => e.Module == "model.embed_tokens").Adapter;
            int r = adapter.Rank, vocab = c.VocabSize;
            for (int t = 0; t < T; t++)
            {
                for (int j = 0; j < H; j++)
                {
                    double sum = 0;
                    for (int k = 0; k < r; k++)
                    {
                        sum += a[(k * vocab) + tokens[t]] * bb[(j * r) + k];
                    }

                    x[t, j] += adapter.Scale * sum;
                }
            }
        }

        double[,] Linear(double[,] source, string name, int outF, int inF)
        {
            var ia3 = adapters.Where(n => p.ContainsKey($"{name}.ia3_l.{n}")).Select(n => (Shape: p[$"{name}.ia3_l.{n}"].Shape, L: W($"{name}.ia3_l.{n}"))).ToList();
            var input = (double[,])source.Clone();
            foreach (var (_, l) in ia3.Where(e => e.Shape[0] == 1))
            {
                for (int t = 0; t < T; t++)
                {
                    for (int i = 0; i < inF; i++)
                    {
                        input[t, i] *= l[i];
                    }
                }
            }

            var w = W(name + ".weight");
            double[]? b = p.ContainsKey(name + ".bias") ? W(name + ".bias") : null;
            var y = new double[T, outF];
            for (int t = 0; t < T; t++)
            {
                for (int o = 0; o < outF; o++)
                {
                    double s = b?[o] ?? 0;
                    for (int i = 0; i < inF; i++)
                    {
                        s += input[t, i] * w[(o * inF) + i];
                    }

                    y[t, o] = s;
                }
            }

            foreach (string adapterName in adapters.Where(n => p.ContainsKey($"{name}.lora_A.{n}.weight")))
            {
                var a = W($"{name}.lora_A.{adapterName}.weight");
                var bb = W($"{name}.lora_B.{adapterName}.weight");
                double[]? loraBias = p.ContainsKey($"{name}.lora_B.{adapterName}.bias") ? W($"{name}.lora_B.{adapterName}.bias") : null;
                var adapter = Peft.Lora.Adapters(model, adapterName).First(e => e.Module == name).Adapter;
                int r = adapter.Rank;
                double scale = adapter.Scale;
                string magnitude = $"{name}.lora_magnitude_vector.{adapterName}.weight";
                double[]? c = p.ContainsKey(magnitude) ? DoraScale(w, a, bb, W(magnitude), scale, inF, outF, r) : null;
                for (int t = 0; t < T; t++)
                {
                    var h = new double[r];
                    for (int k = 0; k < r; k++)
                    {
                        for (int i = 0; i < inF; i++)
                        {
                            h[k] += input[t, i] * a[(k * inF) + i];
                        }
                    }

                    for (int o = 0; o < outF; o++)
                    {
                        double sum = loraBias?[o] ?? 0;
                        for (int k = 0; k < r; k++)
                        {
                            sum += h[k] * bb[(o * r) + k];
                        }

                        if (c == null)
                        {
                            y[t, o] += scale * sum;
                            continue;
                        }

                        double xw = 0;
                        for (int i = 0; i < inF; i++)
                        {
                            xw += input[t, i] * w[(o * inF) + i];
                        }

                        y[t, o] += ((c[o] - 1) * xw) + (c[o] * scale * sum);
                    }
                }
            }

            foreach (var (_, l) in ia3.Where(e => e.Shape[0] != 1))
            {
                for (int t = 0; t < T; t++)
                {
                    for (int o = 0; o < outF; o++)
                    {
                        y[t, o] *= l[o];
                    }
                }
            }

            return y;
        }

        static double[] DoraScale(double[] w, double[] a, double[] b, double[] m, double scale, int inF, int outF, int r)
        {
            var norms = Kernels.Reference.DoraNormReference.RowNorms(w, a, b, scale, inF, outF, r);
            return [.. m.Select((v, o) => v / norms[o])];
        }

        double[,] Norm(double[,] input, string name)
        {
            var w = W(name);
            var y = new double[T, H];
            for (int t = 0; t < T; t++)
            {
                double ms = 0;
                for (int j = 0; j < H; j++)
                {
                    ms += input[t, j] * input[t, j];
                }

                double rstd = 1 / Math.Sqrt((ms / H) + c.RmsNormEps);
                for (int j = 0; j < H; j++)
                {
                    y[t, j] = w[j] * input[t, j] * rstd;
                }
            }

            return y;
        }

        void Rope(double[,] v, int heads)
        {
            for (int t = 0; t < T; t++)
            {
                for (int h = 0; h < heads; h++)
                {
                    for (int j = 0; j < hd / 2; j++)
                    {
                        double angle = t * Math.Pow(c.RopeTheta, -2.0 * j / hd);
                        double x1 = v[t, (h * hd) + j], x2 = v[t, (h * hd) + j + (hd / 2)];
                        v[t, (h * hd) + j] = (x1 * Math.Cos(angle)) - (x2 * Math.Sin(angle));
                        v[t, (h * hd) + j + (hd / 2)] = (x2 * Math.Cos(angle)) + (x1 * Math.Sin(angle));
                    }
                }
            }
        }

        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            string pre = $"model.layers.{l}.";
            var n1 = Norm(x, pre + "input_layernorm.weight");
            var q = Linear(n1, pre + "self_attn.q_proj", nh * hd, H);
            var k = Linear(n1, pre + "self_attn.k_proj", nkv * hd, H);
            var v = Linear(n1, pre + "self_attn.v_proj", nkv * hd, H);
            Rope(q, nh);
            Rope(k, nkv);
            var o = new double[T, nh * hd];
            for (int h = 0; h < nh; h++)
            {
                int kvh = h / (nh / nkv);
                for (int i = 0; i < T; i++)
                {
                    var s = new double[i + 1];
                    for (int j = 0; j <= i; j++)
                    {
                        for (int d = 0; d < hd; d++)
                        {
                            s[j] += q[i, (h * hd) + d] * k[j, (kvh * hd) + d];
                        }

                        s[j] /= Math.Sqrt(hd);
                    }

                    double max = s.Max(), sum = s.Sum(e => Math.Exp(e - max));
                    for (int j = 0; j <= i; j++)
                    {
                        double prob = Math.Exp(s[j] - max) / sum;
                        for (int d = 0; d < hd; d++)
                        {
                            o[i, (h * hd) + d] += prob * v[j, (kvh * hd) + d];
                        }
                    }
                }
            }

            var attn = Linear(o, pre + "self_attn.o_proj", H, nh * hd);
            for (int t = 0; t < T; t++)
            {
                for (int j = 0; j < H; j++)
                {
                    x[t, j] += attn[t, j];
                }
            }

            var n2 = Norm(x, pre + "post_attention_layernorm.weight");
            var gate = Linear(n2, pre + "mlp.gate_proj", I, H);
            var up = Linear(n2, pre + "mlp.up_proj", I, H);
            var act = new double[T, I];
            for (int t = 0; t < T; t++)
            {
                for (int j = 0; j < I; j++)
                {
                    act[t, j] = gate[t, j] / (1 + Math.Exp(-gate[t, j])) * up[t, j];
                }
            }

            var down = Linear(act, pre + "mlp.down_proj", H, I);
            for (int t = 0; t < T; t++)
            {
                for (int j = 0; j < H; j++)
                {
                    x[t, j] += down[t, j];
                }
            }
        }

        var final = Norm(x, "model.norm.weight");
        string head = p.ContainsKey("lm_head.weight") ? "lm_head" : "model.embed_tokens";
        var logits = Linear(final, head, c.VocabSize, H);
        var flat = new double[T * c.VocabSize];
        for (int t = 0; t < T; t++)
        {
            for (int j = 0; j < c.VocabSize; j++)
            {
                flat[(t * c.VocabSize) + j] = logits[t, j];
            }
        }

        return flat;
    }
}
