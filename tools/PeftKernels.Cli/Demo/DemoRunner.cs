// `peft demo`: the whole story on a small Llama, in one process, no downloads.
//   1. pre-train a small base model on generated sentences (it learns the words, not the tasks)
//   2. the base fails the sentiment task ("review: … => pos|neg")
//   3. QLoRA: quantize the base Linears to NF4, fine-tune a LoRA adapter (live progress)
//   4. save the adapter in PEFT layout; its size next to the base's
//   5. merge it into the base and check the merged model gives the same outputs; unmerge
//   6. a second adapter for a second task ("topic: … => sport|food|tech")
//   7. both adapters served in ONE batch with per-row adapter selection, checked against
//      running each adapter on its own rows
//   8. summary table, loss-curve PNG and metrics JSON in the output folder
// On a GPU device (--device cuda) the model lives there from pre-training on: training, evaluation
// and serving run on the device; quantizing is done on the host (the model goes there and back),
// PeftModel puts new adapters and merged weights on the model's device itself, and saving reads the
// host copies (a parameter the device optimizer changed downloads on read).
using System.Diagnostics;
using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using PeftKernels.Training;
using Spectre.Console;

namespace PeftKernels.Cli.Demo;

internal sealed record DemoOptions(string Output, bool Fast, int Seed, int Threads, Device Device)
{
    /// <summary>Precision of the matrix products of pre-training and fine-tuning.</summary>
    public ComputePrecision Compute { get; init; }
}

internal sealed partial class DemoRunner(DemoOptions options, IAnsiConsole console, bool live)
{
    private readonly Dictionary<string, List<double>> curves = [];
    private readonly KernelOptions kernel = new(options.Threads) { Compute = options.Compute };
    private readonly Device device = options.Device;

    public DemoMetrics Run()
    {
        var total = Stopwatch.StartNew();
        Directory.CreateDirectory(options.Output);
        int evalCount = options.Fast ? 48 : 96;
        var sentimentEval = DemoTask.Sentiment.Examples(evalCount, options.Seed + 1000);
        var topicEval = DemoTask.Topic.Examples(evalCount, options.Seed + 2000);

        Step(1, "Pre-train a small Llama on generated sentences (it learns the words, never the tasks)");
        var (model, pretrainSeconds) = Pretrain();
        string baseFolder = Path.Combine(options.Output, "base");
        model.Save(baseFolder);
        DemoOutputs.WriteTokenizerConfig(baseFolder);
        long baseBytes = new FileInfo(Path.Combine(baseFolder, "model.safetensors")).Length;
        console.MarkupLine($"   base: {model.Config.ParameterCount():N0} parameters, {ModelCommands.Mib(baseBytes)} on disk → [grey]{Markup.Escape(baseFolder)}[/]");

        Step(2, "The base model on the sentiment task");
        double sentimentBefore = Evaluate("base", (t, b) => model.Forward(t, b, null, Context), sentimentEval, show: 3);
        double topicBefore = DemoEval.Accuracy(topicEval, DemoEval.Answers((t, b) => model.Forward(t, b, null, Context), topicEval));

        Step(3, "QLoRA: quantize the base Linears to NF4 (double quantization), fine-tune a LoRA adapter");
        model.To(Device.Cpu);
        var (before, after) = model.QuantizeLinears();
        console.MarkupLine($"   Linear weights {ModelCommands.Mib(before)} → {ModelCommands.Mib(after)} in NF4");
        var peft = new PeftModel(model);
        var sentimentConfig = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = TargetModules.FromRegex(TargetModules.AllLinear) };
        peft.AddAdapter("sentiment", sentimentConfig, options.Seed);
        model.To(device);
        console.MarkupLine($"   {Markup.Escape(peft.TrainableParameters().ToString())}");
        double sentimentTrain = Train(model, "sentiment", DemoTask.Sentiment, options.Fast ? 80 : 160);
        double sentimentAfter = Evaluate("sentiment adapter", (t, b) => model.Forward(t, b, null, Context), sentimentEval, show: 3);

        Step(4, "Save the adapter in Hugging Face PEFT layout");
        string adapters = Path.Combine(options.Output, "adapters");
        peft.SaveAdapter(adapters, "sentiment");
        long sentimentBytes = AdapterBytes(adapters, "sentiment");
        console.MarkupLine($"   adapter {ModelCommands.Mib(sentimentBytes)} vs base {ModelCommands.Mib(baseBytes)} ({100.0 * sentimentBytes / baseBytes:F1} %) → [grey]{Markup.Escape(Path.Combine(adapters, "sentiment"))}[/]");

        Step(5, "Merge the adapter into the (dequantized) base and compare outputs");
        var merge = CheckMerge(peft, model, sentimentEval);

        Step(6, "A second adapter for a second task (topic), same 4-bit base");
        var topicConfig = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = TargetModules.FromList("q_proj", "k_proj", "v_proj", "o_proj") };
        peft.AddAdapter("topic", topicConfig, options.Seed + 1);
        peft.SetAdapter("topic");
        foreach (var (_, adapter) in Lora.Adapters(model, "sentiment"))
        {
            adapter.A.Trainable = false;
            adapter.B.Trainable = false;
        }

        double topicTrain = Train(model, "topic", DemoTask.Topic, options.Fast ? 80 : 160);
        double topicAfter = Evaluate("topic adapter", (t, b) => model.Forward(t, b, null, Context), topicEval, show: 2);
        peft.SaveAdapter(adapters, "topic");
        long topicBytes = AdapterBytes(adapters, "topic");

        Step(7, "Serve both adapters (and the base) in ONE batch, one adapter per row");
        var serving = ServeMixedBatch(peft, sentimentEval, topicEval);
        model.To(Device.Cpu);

        var metrics = new DemoMetrics
        {
            Device = device.Name,
            BaseParameters = model.Config.ParameterCount(),
            BaseBytes = baseBytes,
            PretrainSeconds = pretrainSeconds,
            Tasks =
            [
                new DemoTaskMetrics("sentiment", "qlora (nf4 + lora r=8, all-linear)", CountTrainable(model, "sentiment"), sentimentBytes, sentimentBefore, sentimentAfter, sentimentTrain, curves["sentiment"][^1]),
                new DemoTaskMetrics("topic", "qlora (nf4 + lora r=8, attention only)", CountTrainable(model, "topic"), topicBytes, topicBefore, topicAfter, topicTrain, curves["topic"][^1]),
            ],
            Merge = merge,
            Serving = serving,
            TotalSeconds = total.Elapsed.TotalSeconds,
        };
        Step(8, "Summary");
        Summary(metrics);
        DemoOutputs.WriteMetrics(Path.Combine(options.Output, "metrics.json"), metrics);
        DemoOutputs.WriteLossPlot(Path.Combine(options.Output, "loss.png"), curves);
        console.MarkupLine($"   wrote [grey]{Markup.Escape(Path.Combine(options.Output, "loss.png"))}[/], [grey]metrics.json[/], [grey]base/[/] and [grey]adapters/[/] in {total.Elapsed.TotalSeconds:F0} s");
        return metrics;
    }

    private ForwardContext Context => new(0, kernel);

    private void Step(int number, string title) => console.Write(new Rule($"[yellow]{number}[/] {Markup.Escape(title)}") { Justification = Justify.Left });

    private static long AdapterBytes(string folder, string name) =>
        new FileInfo(Path.Combine(Lora.AdapterFolder(folder, name), Lora.WeightsFile)).Length;

    private static long CountTrainable(LlamaForCausalLM model, string adapter) =>
        Lora.Adapters(model, adapter).Sum(a => a.Adapter.A.Count + a.Adapter.B.Count);
}
