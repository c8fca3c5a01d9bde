// Every kernel entry point of this assembly, with the generic instantiations the launchers load,
// so that a test can compile each one to PTX without a GPU (and a reflection test can check that
// no entry point is missing from the list).
using System.Reflection;

namespace PeftKernels.Kernels.Gpu;

/// <summary>One kernel entry point: its method and how it is launched.</summary>
internal sealed record GpuKernelEntry(string Name, MethodInfo Method, bool ImplicitlyGrouped);

internal static class GpuKernelCatalog
{
    /// <summary>The GEMM operand pairs the launchers instantiate (plain, LoRA fp32, 4-bit, QLoRA).</summary>
    private static readonly (Type A, Type B)[] GemmOperandPairs =
    [
        (typeof(DenseOperand), typeof(DenseOperand)),
        (typeof(ConcatColumns<DenseOperand, DenseOperand>), typeof(ConcatRows<DenseOperand, DenseOperand>)),
        (typeof(DenseOperand), typeof(Quant4Operand)),
        (typeof(ConcatColumns<DenseOperand, DenseOperand>), typeof(ConcatRows<Quant4Operand, DenseOperand>)),
    ];

    public static IReadOnlyList<GpuKernelEntry> All { get; } = Build();

    private static List<GpuKernelEntry> Build()
    {
        var list = new List<GpuKernelEntry>();
        foreach (var (a, b) in GemmOperandPairs)
        {
            string pair = $"<{Short(a)}, {Short(b)}>";
            list.Add(new("GemmTiles.NaiveKernel" + pair, Method(typeof(GemmTiles), nameof(GemmTiles.NaiveKernel)).MakeGenericMethod(a, b), true));
            list.Add(new("GemmTiles.TiledKernel" + pair, Method(typeof(GemmTiles), nameof(GemmTiles.TiledKernel)).MakeGenericMethod(a, b), false));
            list.Add(new("GemmTensorCore.Kernel" + pair, Method(typeof(GemmTensorCore), nameof(GemmTensorCore.Kernel)).MakeGenericMethod(a, b), false));
            list.Add(new("GemmTensorCore.EmulatedKernel" + pair, Method(typeof(GemmTensorCore), nameof(GemmTensorCore.EmulatedKernel)).MakeGenericMethod(a, b), false));
        }

        list.Add(new("ColumnSumsKernels.Kernel<Ia3>", Method(typeof(ColumnSumsKernels), nameof(ColumnSumsKernels.Kernel)).MakeGenericMethod(typeof(Ia3Kernels.ProductTerm)), false));
        list.Add(new("ColumnSumsKernels.Kernel<Rows>", Method(typeof(ColumnSumsKernels), nameof(ColumnSumsKernels.Kernel)).MakeGenericMethod(typeof(ColumnSumsKernels.RowTerm)), false));
        list.Add(new("ColumnSumsKernels.Kernel<RmsNormDw>", Method(typeof(ColumnSumsKernels), nameof(ColumnSumsKernels.Kernel)).MakeGenericMethod(typeof(RmsNormKernels.DwTerm)), false));
        Add(list, typeof(Quant4Kernels), nameof(Quant4Kernels.DequantizeKernel), true);
        Add(list, typeof(Quant4Kernels), nameof(Quant4Kernels.NestedKernel), true);
        Add(list, typeof(Quant4MatmulKernels), nameof(Quant4MatmulKernels.GemvKernel), false);
        Add(list, typeof(Ia3Kernels), nameof(Ia3Kernels.ScaleKernel), true);
        Add(list, typeof(AddKernels), nameof(AddKernels.AddKernel), true);
        Add(list, typeof(EmbeddingKernels), nameof(EmbeddingKernels.GatherKernel), true);
        Add(list, typeof(EmbeddingKernels), nameof(EmbeddingKernels.ScatterKernel), true);
        Add(list, typeof(AdamWKernels), nameof(AdamWKernels.StepKernel), true);
        Add(list, typeof(AdamWKernels), nameof(AdamWKernels.SumOfSquaresKernel), false);
        Add(list, typeof(AdamWKernels), nameof(AdamWKernels.ScaleKernel), true);
        Add(list, typeof(SwiGluKernels), nameof(SwiGluKernels.ForwardKernel), true);
        Add(list, typeof(SwiGluKernels), nameof(SwiGluKernels.BackwardKernel), true);
        Add(list, typeof(RopeKernels), nameof(RopeKernels.RotateKernel), true);
        Add(list, typeof(RmsNormKernels), nameof(RmsNormKernels.ForwardKernel), false);
        Add(list, typeof(RmsNormKernels), nameof(RmsNormKernels.BackwardKernel), false);
        Add(list, typeof(CrossEntropyKernels), nameof(CrossEntropyKernels.ForwardKernel), false);
        Add(list, typeof(CrossEntropyKernels), nameof(CrossEntropyKernels.BackwardKernel), true);
        Add(list, typeof(AttentionKernels), nameof(AttentionKernels.ForwardKernel), false);
        Add(list, typeof(AttentionKernels), nameof(AttentionKernels.DqKernel), false);
        Add(list, typeof(AttentionKernels), nameof(AttentionKernels.DkDvKernel), false);
        Add(list, typeof(LoraBranchKernels), nameof(LoraBranchKernels.GatherRowsKernel), true);
        Add(list, typeof(LoraBranchKernels), nameof(LoraBranchKernels.ScatterAddRowsKernel), true);
        Add(list, typeof(SegmentedLoraKernels), nameof(SegmentedLoraKernels.ShrinkKernel), false);
        Add(list, typeof(SegmentedLoraKernels), nameof(SegmentedLoraKernels.ExpandKernel), true);
        foreach (var w in new[] { typeof(DenseOperand), typeof(Quant4Operand) })
        {
            list.Add(new($"DoraNormKernels.RowNormsKernel<{w.Name}>", Method(typeof(DoraNormKernels), nameof(DoraNormKernels.RowNormsKernel)).MakeGenericMethod(w), false));
        }

        Add(list, typeof(DoraNormKernels), nameof(DoraNormKernels.DivideKernel), true);
        Add(list, typeof(VirtualRowsKernels), nameof(VirtualRowsKernels.PrependKernel), true);
        Add(list, typeof(VirtualRowsKernels), nameof(VirtualRowsKernels.TrailingKernel), true);
        Add(list, typeof(VirtualRowsKernels), nameof(VirtualRowsKernels.SpreadKernel), true);
        Add(list, typeof(VirtualRowsKernels), nameof(VirtualRowsKernels.PrefixSumKernel), true);
        Add(list, typeof(VirtualRowsKernels), nameof(VirtualRowsKernels.UnaryKernel), true);
        Add(list, typeof(VirtualRowsKernels), nameof(VirtualRowsKernels.UnaryBackwardKernel), true);
        Add(list, typeof(ActivationKernels), nameof(ActivationKernels.ForwardKernel), true);
        Add(list, typeof(ActivationKernels), nameof(ActivationKernels.BackwardKernel), true);
        Add(list, typeof(ScaleKernels), nameof(ScaleKernels.ScaleKernel), true);
        Add(list, typeof(ScaleKernels), nameof(ScaleKernels.DotKernel), false);
        Add(list, typeof(RowSelectKernels), nameof(RowSelectKernels.GatherKernel), true);
        Add(list, typeof(RowSelectKernels), nameof(RowSelectKernels.ScatterKernel), true);
        Add(list, typeof(FusionMixKernels), nameof(FusionMixKernels.ProbsKernel), true);
        Add(list, typeof(FusionMixKernels), nameof(FusionMixKernels.MixKernel), true);
        Add(list, typeof(FusionMixKernels), nameof(FusionMixKernels.DsKernel), true);
        Add(list, typeof(FusionMixKernels), nameof(FusionMixKernels.GradsKernel), true);
        Add(list, typeof(FusionMixKernels), nameof(FusionMixKernels.RegularizationKernel), false);
        Add(list, typeof(FusionMixKernels), nameof(FusionMixKernels.RegularizationBackwardKernel), true);
        Add(list, typeof(XLoraKernels), nameof(XLoraKernels.ScaleKernel), true);
        Add(list, typeof(XLoraKernels), nameof(XLoraKernels.RowDotsKernel), true);
        Add(list, typeof(XLoraKernels), nameof(XLoraKernels.ReluDropoutKernel), true);
        Add(list, typeof(XLoraKernels), nameof(XLoraKernels.GateKernel), true);
        Add(list, typeof(XLoraKernels), nameof(XLoraKernels.GateBackwardKernel), true);
        Add(list, typeof(MoeRoutingKernels), nameof(MoeRoutingKernels.SoftmaxKernel), true);
        Add(list, typeof(MoeRoutingKernels), nameof(MoeRoutingKernels.SoftmaxBackwardKernel), true);
        Add(list, typeof(MoeRoutingKernels), nameof(MoeRoutingKernels.TopKKernel), true);
        Add(list, typeof(MoeRoutingKernels), nameof(MoeRoutingKernels.TopKBackwardKernel), true);
        Add(list, typeof(MoeRoutingKernels), nameof(MoeRoutingKernels.RoutedSumKernel), true);
        Add(list, typeof(MoeRoutingKernels), nameof(MoeRoutingKernels.RoutedGradKernel), true);
        Add(list, typeof(MoeRoutingKernels), nameof(MoeRoutingKernels.RoutedDotsKernel), true);
        Add(list, typeof(MoeRoutingKernels), nameof(MoeRoutingKernels.BroadcastKernel), true);
        Add(list, typeof(MoeRoutingKernels), nameof(MoeRoutingKernels.MultiplyKernel), true);
        Add(list, typeof(PagedAttentionKernels), nameof(PagedAttentionKernels.WriteKernel), true);
        Add(list, typeof(PagedAttentionKernels), nameof(PagedAttentionKernels.ForwardKernel), false);
        return list;
    }

    private static void Add(List<GpuKernelEntry> list, Type type, string name, bool implicitlyGrouped) =>
        list.Add(new($"{type.Name}.{name}", Method(type, name), implicitlyGrouped));

    private static MethodInfo Method(Type type, string name) =>
        type.GetMethod(name, BindingFlags.Static | BindingFlags.NonPublic | BindingFlags.Public)
        ?? throw new InvalidOperationException($"{type.Name}.{name} not found.");

    private static string Short(Type t) => t.IsGenericType
        ? $"{t.Name[..t.Name.IndexOf('`')]}<{string.Join(", ", t.GetGenericArguments().Select(Short))}>"
        : t.Name;
}
