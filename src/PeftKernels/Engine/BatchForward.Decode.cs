// The decode path of the engine's forward: steps of at most DecodeGemv.MaxRows (4) rows, the common
// case of batch-1 and few-sequence decoding, where every product is a GEMV bound by reading the weights.
// What differs from the general path (same equations, results within fp32 rounding of it):
//   - q, k and v are one fork-join over the concatenated output columns [q | k | v] of one input, gate
//     and up likewise [gate | up]: each thread streams its share of the three (two) weights against
//     the same normalized rows (DecodeGemv.Rows on a column range); o, down and lm_head one each;
//   - RMSNorm, RoPE (a cos/sin table per position, computed as the Rope kernel does), SwiGLU and the
//     residual adds run inline on the calling thread as the next product's input prologue, with no op
//     dispatch, no tensor and no allocation;
//   - with EngineOptions.IntegerDecode, a product over 4-bit weights quantizes its input rows to int8
//     once (per 32 elements, Quant4Int8Gemv.QuantizeActivations) and each thread runs the integer dot
//     products on its columns (Quant4Int8Gemv.Rows);
//   - the fork-join delegate is created once and the job's operands live in fields, so a step
//     allocates no managed memory (adapters run on the calling thread: BGMV at one thread).
using System.Numerics.Tensors;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Engine;

internal sealed partial class BatchForward
{
    private readonly WeightOperand[] jobWeights = new WeightOperand[2 + 1];
    private readonly QuantizedWeight?[] jobQuantized = new QuantizedWeight?[3];
    private readonly float[][] jobOutputs = new float[3][];
    private readonly int[] jobOutFeatures = new int[3];
    private Action<int>? gemvPart;
    private float[] jobInput = [];
    private int jobRows, jobIn, jobPieces, jobParts, jobTotal;
    private bool jobInteger;
    private sbyte[] quantizedInput = [];
    private float[] quantizedScales = [];
    private float[] ropeCos = [], ropeSin = [];

    /// <summary>The decode step: as <see cref="Run"/> for at most 4 rows.</summary>
    private ReadOnlySpan<float> RunDecode(StepBatch batch, AdapterTable table)
    {
        int n = batch.Rows;
        Embed(batch.Tokens.AsSpan(0, n), x.AsSpan(0, n * hidden));
        for (int l = 0; l < config.NumHiddenLayers; l++)
        {
            NormRows(x, inputNorms[l], xn, n);
            if (Fusable(l, batch, table, Projections.Q, Projections.K, Projections.V))
            {
                Gemv(xn, n, hidden, l, Projections.Q, q, Projections.K, k, Projections.V, v);
                ApplyAdapters(l, Projections.Q, xn.AsSpan(0, n * hidden), q.AsSpan(0, n * qDim), batch, table);
                ApplyAdapters(l, Projections.K, xn.AsSpan(0, n * hidden), k.AsSpan(0, n * kvDim), batch, table);
                ApplyAdapters(l, Projections.V, xn.AsSpan(0, n * hidden), v.AsSpan(0, n * kvDim), batch, table);
            }
            else
            {
                Project(l, Projections.Q, xn.AsSpan(0, n * hidden), q.AsSpan(0, n * qDim), batch, table);
                Project(l, Projections.K, xn.AsSpan(0, n * hidden), k.AsSpan(0, n * kvDim), batch, table);
                Project(l, Projections.V, xn.AsSpan(0, n * hidden), v.AsSpan(0, n * kvDim), batch, table);
            }

            RopeRows(q, heads, batch.Positions, n);
            RopeRows(k, kvHeads, batch.Positions, n);
            Attend(l, batch);
            ProjectOne(l, Projections.O, att, n, batch, table, xn);
            AddSites(l, attention: true, x.AsSpan(0, n * hidden), xn.AsSpan(0, n * hidden), batch, table);
            TensorPrimitives.Add(x.AsSpan(0, n * hidden), xn.AsSpan(0, n * hidden), x.AsSpan(0, n * hidden));
            NormRows(x, postNorms[l], xn, n);
            MixLoraMlp(l, xn.AsSpan(0, n * hidden), batch, table);
            if (Fusable(l, batch, table, Projections.Gate, Projections.Up, -1))
            {
                Gemv(xn, n, hidden, l, Projections.Gate, gate, Projections.Up, up, -1, null);
                ApplyAdapters(l, Projections.Gate, xn.AsSpan(0, n * hidden), gate.AsSpan(0, n * inter), batch, table);
                ApplyAdapters(l, Projections.Up, xn.AsSpan(0, n * hidden), up.AsSpan(0, n * inter), batch, table);
            }
            else
            {
                Project(l, Projections.Gate, xn.AsSpan(0, n * hidden), gate.AsSpan(0, n * inter), batch, table);
                Project(l, Projections.Up, xn.AsSpan(0, n * hidden), up.AsSpan(0, n * inter), batch, table);
            }

            SwiGluRows(n * inter);
            ProjectOne(l, Projections.Down, gate, n, batch, table, xn);
            ReplaceMixLoraRows(xn.AsSpan(0, n * hidden), batch);
            AddSites(l, attention: false, x.AsSpan(0, n * hidden), xn.AsSpan(0, n * hidden), batch, table);
            TensorPrimitives.Add(x.AsSpan(0, n * hidden), xn.AsSpan(0, n * hidden), x.AsSpan(0, n * hidden));
        }

        int m = batch.LogitRows;
        if (m == 0)
        {
            return [];
        }

        GatherLogitRows(batch);
        NormRows(logitsIn, finalNorm, logitsIn, m);
        jobWeights[0] = lmHead;
        jobQuantized[0] = lmHeadQuantized;
        jobOutputs[0] = logits;
        jobOutFeatures[0] = vocab;
        RunGemv(logitsIn, m, hidden, 1);
        return logits.AsSpan(0, m * vocab);
    }

    /// <summary>True when no row scales the input of these projections (IA³ feed-forward), so they can share one input.</summary>
    private static bool Fusable(int layer, StepBatch batch, AdapterTable table, int a, int b, int c)
    {
        for (int s = 0; s < batch.Count; s++)
        {
            int slot = batch.Slot[s];
            if (slot < 0)
            {
                continue;
            }

            foreach (int p in (ReadOnlySpan<int>)[a, b, c])
            {
                if (p >= 0 && table.At(layer, p).Ia3[slot] != null && table.At(layer, p).Ia3Feedforward[slot])
                {
                    return false;
                }
            }
        }

        return true;
    }

    /// <summary>y = proj_p(input) with the row's adapters, the base product on the decode GEMV; y is written to <paramref name="output"/>.</summary>
    private void ProjectOne(int layer, int p, float[] input, int n, StepBatch batch, AdapterTable table, float[] output)
    {
        var (inF, outF) = shapes[p];
        var xin = AdapterInput(layer, p, input.AsSpan(0, n * inF), batch, table);
        var source = xin.Overlaps(inputScratch) ? inputScratch : input;
        jobWeights[0] = weights[layer, p];
        jobQuantized[0] = quantized[layer, p];
        jobOutputs[0] = output;
        jobOutFeatures[0] = outF;
        RunGemv(source, n, inF, 1);
        ApplyAdapters(layer, p, source.AsSpan(0, n * inF), output.AsSpan(0, n * outF), batch, table);
    }

    /// <summary>Up to three projections of layer <paramref name="layer"/> over one input in one fork-join (no bias, no adapters).</summary>
    private void Gemv(float[] input, int n, int inF, int layer, int p0, float[] y0, int p1, float[] y1, int p2, float[]? y2)
    {
        int pieces = 0;
        foreach (var (p, y) in (ReadOnlySpan<(int, float[]?)>)[(p0, y0), (p1, y1), (p2, y2)])
        {
            if (p >= 0)
            {
                jobWeights[pieces] = weights[layer, p];
                jobQuantized[pieces] = quantized[layer, p];
                jobOutputs[pieces] = y!;
                jobOutFeatures[pieces] = shapes[p].Out;
                pieces++;
            }
        }

        RunGemv(input, n, inF, pieces);
    }

    /// <summary>Runs the job set up in the job fields: the pieces' output columns split evenly over the threads.</summary>
    private void RunGemv(float[] input, int n, int inF, int pieces)
    {
        var path = kernel.ResolvePath();
        int threads = kernel.ResolveThreads();
        int total = 0;
        bool integer = options.IntegerDecode && inF % Quant4Int8Gemv.Chunk == 0;
        for (int i = 0; i < pieces; i++)
        {
            total += jobOutFeatures[i];
            integer &= jobQuantized[i] != null;
        }

        jobInput = input;
        jobRows = n;
        jobIn = inF;
        jobPieces = pieces;
        jobTotal = total;
        jobInteger = integer;
        jobParts = Math.Max(1, Math.Min(threads, total / 256));
        if (integer)
        {
            int scales = Quant4Int8Gemv.ScaleLength(n, inF, path);
            if (quantizedInput.Length < n * inF)
            {
                quantizedInput = new sbyte[DecodeGemv.MaxRows * Math.Max(inter, Math.Max(hidden, qDim))];
            }

            if (quantizedScales.Length < scales)
            {
                quantizedScales = new float[Quant4Int8Gemv.ScaleLength(DecodeGemv.MaxRows, Math.Max(inter, Math.Max(hidden, qDim)), path)];
            }

            Quant4Int8Gemv.QuantizeActivations(input.AsSpan(0, n * inF), n, inF, quantizedInput.AsSpan(0, n * inF), quantizedScales.AsSpan(0, scales), path);
        }

        gemvPart ??= GemvPart;
        CpuParallel.For(jobParts, threads, gemvPart);
    }

    private void GemvPart(int part)
    {
        var path = kernel.ResolvePath();
        var (c0, c1) = CpuParallel.Split(jobTotal, jobParts, part);
        int offset = 0;
        for (int i = 0; i < jobPieces; i++)
        {
            int outF = jobOutFeatures[i];
            int j0 = Math.Max(c0 - offset, 0), j1 = Math.Min(c1 - offset, outF);
            if (j0 < j1)
            {
                var y = jobOutputs[i].AsSpan(0, jobRows * outF);
                if (jobInteger)
                {
                    Quant4Int8Gemv.Rows(quantizedInput.AsSpan(0, jobRows * jobIn), quantizedScales.AsSpan(0, Quant4Int8Gemv.ScaleLength(jobRows, jobIn, path)),
                        jobQuantized[i]!, y, jobRows, jobIn, outF, j0, j1, path, kernel.Int8Kernel);
                }
                else
                {
                    DecodeGemv.Rows(jobInput.AsSpan(0, jobRows * jobIn), jobWeights[i], y, jobRows, jobIn, outF, j0, j1, path);
                }
            }

            offset += outF;
        }
    }

    /// <summary>y_i = x_i · rstd_i ⊙ w for the first <paramref name="n"/> rows (y may be x).</summary>
    private void NormRows(float[] input, float[] weight, float[] output, int n)
    {
        for (int i = 0; i < n; i++)
        {
            var row = input.AsSpan(i * hidden, hidden);
            var y = output.AsSpan(i * hidden, hidden);
            float rstd = 1f / MathF.Sqrt((TensorPrimitives.SumOfSquares(row) / hidden) + eps);
            TensorPrimitives.Multiply(row, rstd, y);
            TensorPrimitives.Multiply(y, weight, y);
        }
    }

    /// <summary>RoPE in place on rows [n, headCount, headDim] at their positions (rotate-half, as the Rope kernel).</summary>
    private void RopeRows(float[] data, int headCount, int[] positions, int n)
    {
        int half = headDim / 2;
        for (int i = 0; i < n; i++)
        {
            int pos = positions[i];
            EnsureRope(pos);
            var cos = ropeCos.AsSpan(pos * half, half);
            var sin = ropeSin.AsSpan(pos * half, half);
            for (int h = 0; h < headCount; h++)
            {
                var head = data.AsSpan(((i * headCount) + h) * headDim, headDim);
                for (int j = 0; j < half; j++)
                {
                    float a = head[j], b = head[j + half];
                    head[j] = (a * cos[j]) - (b * sin[j]);
                    head[j + half] = (b * cos[j]) + (a * sin[j]);
                }
            }
        }
    }

    /// <summary>The cos/sin table covers positions up to <paramref name="position"/> (grown by doubling; steady state allocates nothing).</summary>
    private void EnsureRope(int position)
    {
        int half = headDim / 2;
        if ((position + 1) * half <= ropeCos.Length)
        {
            return;
        }

        int positions = Math.Max(position + 1, Math.Max(256, 2 * (ropeCos.Length / half)));
        ropeCos = new float[positions * half];
        ropeSin = new float[positions * half];
        for (int p = 0; p < positions; p++)
        {
            for (int j = 0; j < half; j++)
            {
                float angle = p * invFreq[j];
                ropeCos[(p * half) + j] = (float)Math.Cos(angle);
                ropeSin[(p * half) + j] = (float)Math.Sin(angle);
            }
        }
    }

    /// <summary>gate = silu(gate) ⊙ up over the first <paramref name="count"/> elements (up is overwritten as scratch).</summary>
    private void SwiGluRows(int count)
    {
        var g = gate.AsSpan(0, count);
        var u = up.AsSpan(0, count);
        var t = inputScratch.AsSpan(0, count);
        TensorPrimitives.Negate(g, t);
        TensorPrimitives.Exp(t, t);
        TensorPrimitives.Add(t, 1f, t);
        TensorPrimitives.Divide(g, t, g);
        TensorPrimitives.Multiply(g, u, g);
    }
}
