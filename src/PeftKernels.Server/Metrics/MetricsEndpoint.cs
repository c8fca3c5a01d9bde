// GET /metrics: the Prometheus text exposition of one ServerMetrics (its own registry, not prometheus-net's
// process-wide default one).
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace PeftKernels.Server.Metrics;

/// <summary>Maps the metrics endpoint.</summary>
public static class MetricsEndpoint
{
    /// <summary>Serves <paramref name="metrics"/> in the Prometheus text format on GET <paramref name="pattern"/> (default <c>/metrics</c>).</summary>
    public static IEndpointConventionBuilder MapPeftMetrics(this IEndpointRouteBuilder endpoints, ServerMetrics metrics, string pattern = "/metrics")
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        ArgumentNullException.ThrowIfNull(metrics);
        return endpoints.MapGet(pattern, async (HttpContext context) =>
        {
            context.Response.ContentType = ServerMetrics.ContentType;
            context.Response.Headers.CacheControl = "no-store";
            await metrics.WriteAsync(context.Response.Body, context.RequestAborted).ConfigureAwait(false);
        });
    }
}
