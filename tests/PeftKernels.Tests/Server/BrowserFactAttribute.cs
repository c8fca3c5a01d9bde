// The browser tests run the system Chromium (Debian package chromium) through Microsoft.Playwright; no
// browser is ever downloaded. They run everywhere (and fail with the install command when Chromium is
// missing) unless PEFT_SKIP_BROWSER_TESTS=1 asks to skip them.
namespace PeftKernels.Tests.Server;

/// <summary>A fact that needs the system Chromium; skipped only when <c>PEFT_SKIP_BROWSER_TESTS=1</c>.</summary>
public sealed class BrowserFactAttribute : FactAttribute
{
    public const string SkipVariable = "PEFT_SKIP_BROWSER_TESTS";

    public BrowserFactAttribute()
    {
        if (Environment.GetEnvironmentVariable(SkipVariable) == "1")
        {
            Skip = $"{SkipVariable}=1: browser tests skipped.";
        }
    }
}

internal static class SystemChromium
{
    private static readonly string[] Names = ["chromium", "chromium-browser"];

    /// <summary>The Chromium executable on PATH; throws with the install command when there is none.</summary>
    public static string Find()
    {
        foreach (string dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            foreach (string name in Names)
            {
                string path = Path.Combine(dir, name);
                if (File.Exists(path))
                {
                    return path;
                }
            }
        }

        throw new InvalidOperationException("the browser tests need the system Chromium and none is on PATH (looked for "
            + string.Join(", ", Names) + "): install it with `apt-get install chromium` (Debian), or set "
            + BrowserFactAttribute.SkipVariable + "=1 to skip these tests.");
    }
}
