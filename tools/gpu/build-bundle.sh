#!/usr/bin/env bash
# Builds the GPU bundle for a Linux x64 host with an NVIDIA GPU but no .NET SDK and no network:
#   artifacts/gpu-bundle/
#     app/                     framework-dependent Release publish (linux-x64) of tools/PeftKernels.GpuRunner
#     dotnet-runtime.tar.xz    this machine's .NET runtime: the dotnet host, host/fxr and
#                              shared/Microsoft.NETCore.App/<10.x>, xz-compressed
#     run.sh                   a copy of tools/gpu/run.sh (unpacks the runtime, runs the runner)
#     BUILD-INFO               what was bundled
# artifacts/ is ignored by git. Copy the folder to the GPU host and run: ./run.sh <out-dir>
set -euo pipefail
cd "$(dirname "$0")/../.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

die() { echo "build-bundle: $*" >&2; exit 1; }

command -v dotnet >/dev/null 2>&1 || die "dotnet SDK not found on PATH (see global.json for the version)."
command -v xz >/dev/null 2>&1 || die "xz not found (apt-get install xz-utils)."

# The newest Microsoft.NETCore.App 10.x runtime, e.g. "Microsoft.NETCore.App 10.0.12 [/usr/share/dotnet/shared/Microsoft.NETCore.App]".
runtime_line=$(dotnet --list-runtimes | grep -E '^Microsoft\.NETCore\.App 10\.' | sort -V -k2 | tail -n 1 || true)
[ -n "$runtime_line" ] || die "no Microsoft.NETCore.App 10.x runtime in 'dotnet --list-runtimes'."
runtime_version=$(echo "$runtime_line" | awk '{print $2}')
shared_dir=$(echo "$runtime_line" | sed -E 's/.*\[(.*)\]$/\1/')
dotnet_root=$(cd "$shared_dir/../.." && pwd)
[ -x "$dotnet_root/dotnet" ] || die "no dotnet host next to $shared_dir (expected $dotnet_root/dotnet)."
fxr_dir=$(ls -d "$dotnet_root"/host/fxr/* 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$fxr_dir" ] || die "no host/fxr under $dotnet_root."

out=artifacts/gpu-bundle
rm -rf "$out"
mkdir -p "$out"

echo "build-bundle: publishing tools/PeftKernels.GpuRunner (Release, linux-x64, framework-dependent)"
dotnet publish tools/PeftKernels.GpuRunner/PeftKernels.GpuRunner.csproj -c Release -r linux-x64 --self-contained false \
  -p:PublishSingleFile=false -p:DebugType=none -o "$out/app" >"$out/publish.log" 2>&1 \
  || { tail -n 30 "$out/publish.log" >&2; die "dotnet publish failed (full log: $out/publish.log)."; }
rm -f "$out/publish.log"
[ -f "$out/app/PeftKernels.GpuRunner.dll" ] || die "publish produced no PeftKernels.GpuRunner.dll."

echo "build-bundle: packing .NET runtime $runtime_version from $dotnet_root (xz -9, a minute or two)"
fxr_rel=${fxr_dir#"$dotnet_root"/}
XZ_OPT="-9 -T0" tar -C "$dotnet_root" -cJf "$out/dotnet-runtime.tar.xz" \
  dotnet "$fxr_rel" "shared/Microsoft.NETCore.App/$runtime_version" LICENSE.txt ThirdPartyNotices.txt

cp tools/gpu/run.sh "$out/run.sh"
chmod +x "$out/run.sh"
{
  echo "runner: tools/PeftKernels.GpuRunner (Release, linux-x64, framework-dependent)"
  echo "runtime: Microsoft.NETCore.App $runtime_version ($fxr_rel)"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
} >"$out/BUILD-INFO"

echo "build-bundle: done: $out ($(du -sh "$out" | cut -f1); runtime $(du -h "$out/dotnet-runtime.tar.xz" | cut -f1), app $(du -sh "$out/app" | cut -f1))"
