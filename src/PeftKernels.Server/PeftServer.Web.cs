// GET /: the server's web page (Web/index.html, an embedded resource: one self-contained HTML file with
// inline CSS and JavaScript, no external files). It lists the models, runs a side-by-side streaming
// playground over /v1/completions and polls /metrics; its own requests carry the API key the user types,
// so the page itself needs no key. A Content-Security-Policy allows only the page's own inline script and
// style (by SHA-256 hash) and requests to the same origin.
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace PeftKernels.Server;

public sealed partial class PeftServer
{
    private static readonly Lazy<(byte[] Html, string Policy)> WebPage = new(LoadWebPage);

    /// <summary>The web page served at <c>GET /</c> (UTF-8 HTML).</summary>
    internal static byte[] WebPageHtml => WebPage.Value.Html;

    private static void MapWebPage(WebApplication web) => web.MapGet("/", async (HttpContext context) =>
    {
        var (html, policy) = WebPage.Value;
        context.Response.ContentType = "text/html; charset=utf-8";
        context.Response.Headers.CacheControl = "no-store";
        context.Response.Headers["Content-Security-Policy"] = policy;
        context.Response.Headers["X-Content-Type-Options"] = "nosniff";
        context.Response.Headers["Referrer-Policy"] = "no-referrer";
        await context.Response.Body.WriteAsync(html, context.RequestAborted).ConfigureAwait(false);
    });

    private static (byte[] Html, string Policy) LoadWebPage()
    {
        const string resource = "PeftKernels.Server.Web.index.html";
        using var stream = typeof(PeftServer).Assembly.GetManifestResourceStream(resource)
            ?? throw new InvalidOperationException($"the web page resource '{resource}' is missing from {typeof(PeftServer).Assembly.GetName().Name}.");
        using var reader = new StreamReader(stream, Encoding.UTF8);
        string html = reader.ReadToEnd();
        string policy = $"default-src 'none'; script-src {Hash(html, "script")}; style-src {Hash(html, "style")}; connect-src 'self'; "
            + "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
        return (Encoding.UTF8.GetBytes(html), policy);
    }

    /// <summary>The CSP source for the page's one inline <paramref name="tag"/> element: the SHA-256 of its text, as the browser hashes it.</summary>
    private static string Hash(string html, string tag)
    {
        int open = html.IndexOf($"<{tag}>", StringComparison.Ordinal);
        int close = html.IndexOf($"</{tag}>", StringComparison.Ordinal);
        if (open < 0 || close < open || html.IndexOf($"<{tag}>", open + 1, StringComparison.Ordinal) >= 0)
        {
            throw new InvalidOperationException($"the web page must hold exactly one <{tag}> element.");
        }

        string body = html[(open + tag.Length + 2)..close];
        return $"'sha256-{Convert.ToBase64String(SHA256.HashData(Encoding.UTF8.GetBytes(body)))}'";
    }
}
