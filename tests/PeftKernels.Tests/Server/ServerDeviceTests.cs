// `peft serve --device`: a PeftServer whose ServeOptions.Device is a GPU device (the shared ILGPU CPU
// accelerator standing in for CUDA) moves its model there and runs the engine's forward on it. Over
// HTTP on loopback, a base request and a LoRA request sent together (so their decode steps share the
// engine's batch: fewer steps than the two run one after the other) answer /v1/completions with the
// same greedy text as the same requests on a CPU server.
using PeftKernels.Engine;

namespace PeftKernels.Tests.Server;

[Collection("Gpu")]
public sealed class ServerDeviceTests(GpuFixture gpu)
{
    private const int Tokens = 4;

    private static async Task<string[]> Together(ServerFixture f)
    {
        object Body(string model, string prompt) => new { model, prompt, max_tokens = Tokens, temperature = 0 };
        var answers = await Task.WhenAll(f.Post("/v1/completions", Body(ServerFixture.BaseName, "base prompt")), f.Post("/v1/completions", Body("r8", "lora prompt")));
        foreach (var (status, json) in answers)
        {
            Assert.True(status == 200, $"status {status}: {json}");
        }

        return [.. answers.Select(a => a.Body.GetProperty("choices")[0].GetProperty("text").GetString()!)];
    }

    [Fact]
    public async Task ABaseAndALoraRequestInOneBatchOnADeviceServerAnswerAsTheCpuServer()
    {
        string[] expected;
        await using (var cpu = await ServerFixture.Start())
        {
            Assert.False(cpu.Server.Engine.Device.IsGpu);
            expected = await Together(cpu);
            Assert.Equal(cpu.Greedy("lora prompt", Tokens, "r8"), expected[1]);
        }

        var device = Device.FromAccelerator(gpu.Accelerator);
        await using var f = await ServerFixture.Start(o => o with { Device = device });
        f.Http.Timeout = TimeSpan.FromMinutes(5); // the simulated accelerator compiles its kernels on first use
        Assert.Same(device, f.Server.Engine.Device);
        Assert.Equal(expected, await Together(f));
        Assert.NotEqual(expected[0], expected[1]);

        // Each request alone takes one step per token; sent together they shared steps (one batch holding both rows).
        Assert.InRange(f.Server.Engine.Stats.Steps, Tokens, (2 * Tokens) - 1);
    }
}
