// The API-key file of `peft serve --api-keys FILE` (JSON), read strictly: an unknown field, a repeated
// property, a wrong type, a tenant a key names but the file does not define, or a default adapter the tenant
// may not use is an InvalidDataException naming the file and the field (a key itself is never printed:
// keys are named by their position, keys[3]). The format (docs/serving-tenants.md has an example):
//   tenants   { NAME: { adapters: [MODEL | "*"], default_adapter?: MODEL, can_manage_adapters?: bool,
//                       rate_limit?: { requests_per_minute?: int, burst?: int, concurrent_requests?: int } } }
//   keys      { KEY: TENANT | [TENANT, ...] }            the first tenant listed is the key's default tenant
//   aliases   { ALIAS: { VERSION: weight, ... } }        canary splits (CanaryAliases)
//   trust_tenant_header  bool: requests without a key are admitted as the tenant their X-Tenant-Id names
using System.Text.Json;

namespace PeftKernels.Server.Tenants;

/// <summary>A parsed API-key file: tenants, the keys that act for them, canary aliases.</summary>
public sealed class TenantKeyFile
{
    private TenantKeyFile(string source, IReadOnlyDictionary<string, TenantPolicy> tenants, IReadOnlyList<KeyValuePair<string, IReadOnlyList<string>>> keys,
        IReadOnlyList<KeyValuePair<string, IReadOnlyList<CanaryVersion>>> aliases, bool trustTenantHeader)
    {
        Source = source;
        Tenants = tenants;
        Keys = keys;
        Aliases = aliases;
        TrustTenantHeader = trustTenantHeader;
    }

    /// <summary>Where it was read from (the path, or the name given to <see cref="Parse"/>).</summary>
    public string Source { get; }

    /// <summary>The tenants by name.</summary>
    public IReadOnlyDictionary<string, TenantPolicy> Tenants { get; }

    /// <summary>Each key and the tenants it may act for (the first is its default tenant).</summary>
    public IReadOnlyList<KeyValuePair<string, IReadOnlyList<string>>> Keys { get; }

    /// <summary>The canary aliases, in file order.</summary>
    public IReadOnlyList<KeyValuePair<string, IReadOnlyList<CanaryVersion>>> Aliases { get; }

    /// <summary>Whether a request without a key is admitted as the tenant its <c>X-Tenant-Id</c> header names (for a server behind an authenticating gateway).</summary>
    public bool TrustTenantHeader { get; }

    /// <summary>Reads and checks the key file at <paramref name="path"/>.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">It is not valid JSON or breaks the format (the message names the file and the field).</exception>
    public static TenantKeyFile Load(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"the API-key file '{path}' does not exist.", path);
        }

        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>Parses key-file <paramref name="json"/>; <paramref name="source"/> names it in error messages.</summary>
    /// <exception cref="InvalidDataException">It is not valid JSON or breaks the format (the message names the source and the field).</exception>
    public static TenantKeyFile Parse(string json, string source)
    {
        ArgumentNullException.ThrowIfNull(json);
        ArgumentNullException.ThrowIfNull(source);
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{source}: not valid JSON (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}): {e.Message}", e);
        }

        using (doc)
        {
            return new Reader(source).File(doc.RootElement);
        }
    }

    private sealed class Reader(string source)
    {
        public TenantKeyFile File(JsonElement root)
        {
            var fields = Object(root, "(top level)", ["tenants", "keys", "aliases", "trust_tenant_header"]);
            bool trust = fields.TryGetValue("trust_tenant_header", out var t) && Bool(t, "trust_tenant_header");
            if (!fields.TryGetValue("tenants", out var tenantsElement))
            {
                throw Error("tenants", "missing (expected an object of tenant name → policy)");
            }

            var tenants = new Dictionary<string, TenantPolicy>(StringComparer.Ordinal);
            foreach (var (name, value) in Properties(tenantsElement, "tenants"))
            {
                tenants[name] = Tenant(name, value);
            }

            if (tenants.Count == 0)
            {
                throw Error("tenants", "empty (expected at least one tenant)");
            }

            var keys = new List<KeyValuePair<string, IReadOnlyList<string>>>();
            if (fields.TryGetValue("keys", out var keysElement))
            {
                int index = 0;
                foreach (var (key, value) in Properties(keysElement, "keys", secretNames: true))
                {
                    keys.Add(new(key, KeyTenants(value, $"keys[{index}]", tenants)));
                    index++;
                }
            }
            else if (!trust)
            {
                throw Error("keys", "missing (expected an object of key → tenant name(s); omit it only with \"trust_tenant_header\": true)");
            }

            var aliases = new List<KeyValuePair<string, IReadOnlyList<CanaryVersion>>>();
            if (fields.TryGetValue("aliases", out var aliasesElement))
            {
                foreach (var (name, value) in Properties(aliasesElement, "aliases"))
                {
                    var versions = new List<CanaryVersion>();
                    foreach (var (version, weight) in Properties(value, $"aliases.{name}"))
                    {
                        versions.Add(new CanaryVersion(version, PositiveNumber(weight, $"aliases.{name}.{version}")));
                    }

                    aliases.Add(new(name, versions));
                }

                try
                {
                    new CanaryAliases().SetAll(aliases); // the alias rules (no versions, an alias naming an alias, ...)
                }
                catch (ArgumentException e)
                {
                    throw Error("aliases", e.Message.Split(" (Parameter")[0].TrimEnd('.'));
                }
            }

            return new TenantKeyFile(source, tenants, keys, aliases, trust);
        }

        private TenantPolicy Tenant(string name, JsonElement element)
        {
            string at = $"tenants.{name}";
            var fields = Object(element, at, ["adapters", "default_adapter", "can_manage_adapters", "rate_limit"]);
            if (!fields.TryGetValue("adapters", out var adaptersElement))
            {
                throw Error($"{at}.adapters", "missing (expected an array of model names, \"*\" for all)");
            }

            var models = StringArray(adaptersElement, $"{at}.adapters");
            string? defaultAdapter = fields.TryGetValue("default_adapter", out var d) ? NonEmptyString(d, $"{at}.default_adapter") : null;
            bool manage = fields.TryGetValue("can_manage_adapters", out var m) && Bool(m, $"{at}.can_manage_adapters");
            var limit = fields.TryGetValue("rate_limit", out var r) ? RateLimit(r, $"{at}.rate_limit") : TenantRateLimit.None;
            if (defaultAdapter != null && !models.Contains(defaultAdapter) && !models.Contains(TenantPolicy.AnyModel))
            {
                throw Error($"{at}.default_adapter", $"'{defaultAdapter}' is not in {at}.adapters [{string.Join(", ", models)}]");
            }

            return new TenantPolicy(name, models, defaultAdapter, manage, limit);
        }

        private TenantRateLimit RateLimit(JsonElement element, string at)
        {
            var fields = Object(element, at, ["requests_per_minute", "burst", "concurrent_requests"]);
            int? rpm = fields.TryGetValue("requests_per_minute", out var a) ? PositiveInt(a, $"{at}.requests_per_minute") : null;
            int? burst = fields.TryGetValue("burst", out var b) ? PositiveInt(b, $"{at}.burst") : null;
            int? concurrent = fields.TryGetValue("concurrent_requests", out var c) ? PositiveInt(c, $"{at}.concurrent_requests") : null;
            if (burst != null && rpm == null)
            {
                throw Error($"{at}.burst", "set without requests_per_minute (the burst is the size of the requests-per-minute bucket)");
            }

            if (rpm == null && concurrent == null)
            {
                throw Error(at, "empty (expected requests_per_minute and/or concurrent_requests)");
            }

            return new TenantRateLimit(rpm, burst, concurrent);
        }

        private List<string> KeyTenants(JsonElement element, string at, Dictionary<string, TenantPolicy> tenants)
        {
            List<string> names = element.ValueKind == JsonValueKind.String ? [NonEmptyString(element, at)] : StringArray(element, at, "a tenant name or an array of tenant names");
            foreach (var name in names)
            {
                if (!tenants.ContainsKey(name))
                {
                    throw Error(at, $"names tenant '{name}', which the \"tenants\" section does not define");
                }
            }

            if (names.Distinct(StringComparer.Ordinal).Count() != names.Count)
            {
                throw Error(at, "lists a tenant twice");
            }

            return names;
        }

        private Dictionary<string, JsonElement> Object(JsonElement element, string at, string[] known)
        {
            var fields = new Dictionary<string, JsonElement>(StringComparer.Ordinal);
            foreach (var (name, value) in Properties(element, at))
            {
                if (!known.Contains(name))
                {
                    throw Error(at == "(top level)" ? name : $"{at}.{name}", $"unknown field (expected one of {string.Join(", ", known)})");
                }

                fields[name] = value;
            }

            return fields;
        }

        private List<(string Name, JsonElement Value)> Properties(JsonElement element, string at, bool secretNames = false)
        {
            Expect(element, JsonValueKind.Object, at, "an object");
            var seen = new HashSet<string>(StringComparer.Ordinal);
            var list = new List<(string, JsonElement)>();
            int index = 0;
            foreach (var p in element.EnumerateObject())
            {
                string shown = secretNames ? $"[{index}]" : $".{p.Name}";
                if (p.Name.Length == 0 || (secretNames && string.IsNullOrWhiteSpace(p.Name)))
                {
                    throw Error($"{at}{shown}", "an empty name");
                }

                if (!seen.Add(p.Name))
                {
                    throw Error($"{at}{shown}", secretNames ? "a duplicate key (the same key is listed twice)" : "a duplicate field");
                }

                list.Add((p.Name, p.Value));
                index++;
            }

            return list;
        }

        private List<string> StringArray(JsonElement element, string at, string expected = "an array of strings")
        {
            Expect(element, JsonValueKind.Array, at, expected);
            var list = new List<string>();
            int i = 0;
            foreach (var item in element.EnumerateArray())
            {
                list.Add(NonEmptyString(item, $"{at}[{i++}]"));
            }

            if (list.Count == 0)
            {
                throw Error(at, $"empty (expected {expected} with at least one entry)");
            }

            return list;
        }

        private string NonEmptyString(JsonElement element, string at)
        {
            Expect(element, JsonValueKind.String, at, "a string");
            string value = element.GetString()!;
            return string.IsNullOrWhiteSpace(value) ? throw Error(at, "an empty string") : value;
        }

        private bool Bool(JsonElement element, string at)
        {
            if (element.ValueKind is not (JsonValueKind.True or JsonValueKind.False))
            {
                throw Error(at, $"expected true or false, got {Describe(element)}");
            }

            return element.GetBoolean();
        }

        private int PositiveInt(JsonElement element, string at)
        {
            Expect(element, JsonValueKind.Number, at, "a positive integer");
            return element.TryGetInt32(out int v) && v > 0 ? v : throw Error(at, $"expected a positive integer, got {element.GetRawText()}");
        }

        private double PositiveNumber(JsonElement element, string at)
        {
            Expect(element, JsonValueKind.Number, at, "a positive number");
            return element.TryGetDouble(out double v) && double.IsFinite(v) && v > 0 ? v : throw Error(at, $"expected a positive number, got {element.GetRawText()}");
        }

        private void Expect(JsonElement element, JsonValueKind kind, string at, string expected)
        {
            if (element.ValueKind != kind)
            {
                throw Error(at, $"expected {expected}, got {Describe(element)}");
            }
        }

        private static string Describe(JsonElement element) => element.ValueKind switch
        {
            JsonValueKind.Object => "an object",
            JsonValueKind.Array => "an array",
            JsonValueKind.String => "a string",
            JsonValueKind.Number => $"the number {element.GetRawText()}",
            JsonValueKind.True or JsonValueKind.False => $"the boolean {element.GetRawText()}",
            _ => "null",
        };

        private InvalidDataException Error(string field, string problem) => new($"{source}: {field}: {problem}.");
    }
}
