// A training checkpoint folder: trainer_state.safetensors holds, per trainable parameter (by
// its model path), its values ("param.<name>") and AdamW moments ("exp_avg.<name>",
// "exp_avg_sq.<name>"); trainer_state.json holds the step (the data position: a micro-step's
// batch and dropout masks are derived from seed and micro-step index only), the optimizer's
// update count (AdamW's bias-correction t: lower than the step by the skipped steps), the seed,
// the losses so far (a skipped step's non-finite loss as the string "NaN", "Infinity" or
// "-Infinity") and the skipped steps. Both are
// staged and renamed into place together, so a checkpoint is complete or absent. For a model on a
// GPU device, saving downloads the trained values and moments, and loading uploads them again
// (into the parameters' mirrors and the optimizer's device moments).
using System.Globalization;
using System.Text.Json;
using PeftKernels.IO;
using PeftKernels.Quantization;

namespace PeftKernels.Training;

public sealed partial class Trainer
{
    /// <summary>State file name.</summary>
    public const string StateTensorsFile = "trainer_state.safetensors";

    /// <summary>State JSON file name.</summary>
    public const string StateJsonFile = "trainer_state.json";

    /// <summary>Writes a checkpoint of the trainable weights, optimizer moments, step, seed and losses.</summary>
    /// <exception cref="TrainingDivergedException">A trainable parameter is not finite (nothing is written).</exception>
    public void SaveCheckpoint(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        EnsureFiniteParameters();
        var names = NamesByParameter();
        var tensors = new List<SafeTensor>();
        foreach (var (p, _, m, v) in Optimizer.State)
        {
            string name = names[p];
            long[] shape = [.. p.Shape.Select(d => (long)d)];
            tensors.Add(SafeTensor.FromFloat32("param." + name, p.Data, shape));
            tensors.Add(SafeTensor.FromFloat32("exp_avg." + name, m, shape));
            tensors.Add(SafeTensor.FromFloat32("exp_avg_sq." + name, v, shape));
        }

        using var writer = new CheckpointWriter(folder);
        writer.StageSafeTensors(StateTensorsFile, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        AtomicFile.Write(writer.StagePath(StateJsonFile), stream =>
        {
            using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
            json.WriteStartObject();
            json.WriteNumber("step", Step);
            json.WriteNumber("optimizer_step", Optimizer.StepCount);
            json.WriteNumber("total_steps", Options.Steps);
            json.WriteNumber("seed", Options.Seed);
            json.WriteNumber("gradient_accumulation", Options.GradientAccumulation);
            json.WriteStartArray("losses");
            foreach (double l in losses)
            {
                if (double.IsFinite(l))
                {
                    json.WriteNumberValue(l);
                }
                else
                {
                    json.WriteStringValue(l.ToString(CultureInfo.InvariantCulture));
                }
            }

            json.WriteEndArray();
            json.WriteStartArray("skipped_steps");
            foreach (int s in skipped)
            {
                json.WriteNumberValue(s);
            }

            json.WriteEndArray();
            json.WriteEndObject();
        });
        writer.Commit();
    }

    /// <summary>Restores weights, moments, step and losses from <paramref name="folder"/>; the options must match the saved seed and accumulation.</summary>
    /// <exception cref="InvalidDataException">The checkpoint does not belong to this model/options.</exception>
    public void LoadCheckpoint(string folder)
    {
        string jsonPath = Path.Combine(folder, StateJsonFile);
        if (!File.Exists(jsonPath))
        {
            throw new InvalidDataException($"{folder} is not a training checkpoint: it has no {StateJsonFile}.");
        }

        using var doc = ParseState(jsonPath);
        var root = doc.RootElement;
        int step = StateInt(root, "step", jsonPath);
        int seed = StateInt(root, "seed", jsonPath);
        int accum = StateInt(root, "gradient_accumulation", jsonPath);
        int updates = root.TryGetProperty("optimizer_step", out _) ? StateInt(root, "optimizer_step", jsonPath) : step;
        if (seed != Options.Seed || accum != Options.GradientAccumulation)
        {
            throw new InvalidDataException($"{jsonPath}: saved with seed {seed} and gradient accumulation {accum}; this trainer has {Options.Seed} and {Options.GradientAccumulation}.");
        }

        if (step < 0 || step > Options.Steps || updates < 0 || updates > step)
        {
            throw new InvalidDataException($"{jsonPath}: step {step} with {updates} optimizer updates does not fit a run of {Options.Steps} steps.");
        }

        var savedLosses = StateArray(root, "losses", jsonPath).Select(e => e.ValueKind == JsonValueKind.String
            ? double.Parse(e.GetString()!, NumberStyles.Float, CultureInfo.InvariantCulture)
            : e.GetDouble()).ToList();
        var savedSkipped = root.TryGetProperty("skipped_steps", out _) ? StateArray(root, "skipped_steps", jsonPath).Select(e => e.GetInt32()).ToList() : [];
        if (savedLosses.Count != step || savedSkipped.Count != step - updates)
        {
            throw new InvalidDataException($"{jsonPath}: {savedLosses.Count} losses and {savedSkipped.Count} skipped steps do not fit step {step} with {updates} optimizer updates.");
        }

        var names = NamesByParameter();
        using var file = SafeTensorsFile.Open(Path.Combine(folder, StateTensorsFile));
        var expected = Optimizer.Parameters.SelectMany(p => new[] { "param.", "exp_avg.", "exp_avg_sq." }.Select(k => k + names[p])).ToHashSet();
        var missing = expected.Where(k => !file.Contains(k)).ToList();
        var unexpected = file.Names.Where(k => !expected.Contains(k)).ToList();
        if (missing.Count + unexpected.Count > 0)
        {
            throw new InvalidDataException($"{folder}: checkpoint does not match the trainable parameters: missing [{string.Join(", ", missing)}], unexpected [{string.Join(", ", unexpected)}].");
        }

        int index = 0;
        foreach (var p in Optimizer.Parameters)
        {
            string name = names[p];
            var loaded = new[] { "param.", "exp_avg.", "exp_avg_sq." }.Select(prefix =>
            {
                var values = file.ReadFloat32(prefix + name);
                if (values.LongLength != p.Count)
                {
                    throw new InvalidDataException($"{folder}: '{prefix + name}' has {values.Length} elements; the parameter has {p.Count}.");
                }

                return values;
            }).ToArray();
            loaded[0].CopyTo(p.Data, 0);
            p.RefreshMirror();
            Optimizer.SetMoments(index++, loaded[1], loaded[2]);
        }

        Optimizer.StepCount = updates;
        this.step = step;
        losses.Clear();
        losses.AddRange(savedLosses);
        skipped.Clear();
        skipped.AddRange(savedSkipped);
    }

    /// <summary>
    /// Throws <see cref="TrainingDivergedException"/> naming the first trainable parameter element that is NaN or infinite: an update can
    /// overflow even when the step's loss and gradient norm were finite, and such a state must never be saved as a good one.
    /// </summary>
    public void EnsureFiniteParameters()
    {
        foreach (var (name, p) in model.NamedParameters().Where(e => e.Parameter.Trainable))
        {
            float[] data = p.Data;
            for (int i = 0; i < data.Length; i++)
            {
                if (!float.IsFinite(data[i]))
                {
                    throw new TrainingDivergedException(string.Create(CultureInfo.InvariantCulture,
                        $"training diverged at step {Step}: the update made {name}[{i}] = {data[i]}"));
                }
            }
        }
    }

    private static JsonDocument ParseState(string jsonPath)
    {
        try
        {
            return JsonDocument.Parse(File.ReadAllBytes(jsonPath));
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{jsonPath} is not valid JSON: {e.Message}", e);
        }
    }

    private static int StateInt(JsonElement root, string key, string jsonPath) =>
        root.ValueKind == JsonValueKind.Object && root.TryGetProperty(key, out var value) && value.TryGetInt32(out int result)
            ? result
            : throw new InvalidDataException($"{jsonPath}: \"{key}\" must be an integer.");

    private static IEnumerable<JsonElement> StateArray(JsonElement root, string key, string jsonPath)
    {
        if (!root.TryGetProperty(key, out var value) || value.ValueKind != JsonValueKind.Array)
        {
            throw new InvalidDataException($"{jsonPath}: \"{key}\" must be an array.");
        }

        return value.EnumerateArray().ToList();
    }

    private Dictionary<Parameter, string> NamesByParameter() =>
        model.NamedParameters().Where(p => p.Parameter.Trainable).ToDictionary(p => p.Parameter, p => p.Name, new ParameterComparer());

    private sealed class ParameterComparer : IEqualityComparer<Parameter>
    {
        public bool Equals(Parameter? x, Parameter? y) => ReferenceEquals(x, y);

        public int GetHashCode(Parameter obj) => System.Runtime.CompilerServices.RuntimeHelpers.GetHashCode(obj);
    }
}
