// A training checkpoint folder: trainer_state.safetensors holds, per trainable parameter (by
// its model path), its values ("param.<name>") and AdamW moments ("exp_avg.<name>",
// "exp_avg_sq.<name>"); trainer_state.json holds the step, the seed (the whole RNG state: a
// micro-step's randomness is derived from seed and index) and the losses so far. Both are
// staged and renamed into place together, so a checkpoint is complete or absent. For a model on a
// GPU device, saving downloads the trained values and moments, and loading uploads them again
// (into the parameters' mirrors and the optimizer's device moments).
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
    public void SaveCheckpoint(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
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
            json.WriteNumber("total_steps", Options.Steps);
            json.WriteNumber("seed", Options.Seed);
            json.WriteNumber("gradient_accumulation", Options.GradientAccumulation);
            json.WriteStartArray("losses");
            foreach (double l in losses)
            {
                json.WriteNumberValue(l);
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
        using var doc = JsonDocument.Parse(File.ReadAllBytes(jsonPath));
        var root = doc.RootElement;
        int step = root.GetProperty("step").GetInt32();
        int seed = root.GetProperty("seed").GetInt32();
        int accum = root.GetProperty("gradient_accumulation").GetInt32();
        if (seed != Options.Seed || accum != Options.GradientAccumulation)
        {
            throw new InvalidDataException($"{jsonPath}: saved with seed {seed} and gradient accumulation {accum}; this trainer has {Options.Seed} and {Options.GradientAccumulation}.");
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

        Optimizer.StepCount = step;
        losses.Clear();
        losses.AddRange(root.GetProperty("losses").EnumerateArray().Select(e => e.GetDouble()));
    }

    private Dictionary<Parameter, string> NamesByParameter() =>
        model.NamedParameters().Where(p => p.Parameter.Trainable).ToDictionary(p => p.Parameter, p => p.Name, new ParameterComparer());

    private sealed class ParameterComparer : IEqualityComparer<Parameter>
    {
        public bool Equals(Parameter? x, Parameter? y) => ReferenceEquals(x, y);

        public int GetHashCode(Parameter obj) => System.Runtime.CompilerServices.RuntimeHelpers.GetHashCode(obj);
    }
}
