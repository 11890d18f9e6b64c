#!/usr/bin/env bash
# Builds, here, what device/run.sh runs on a lent GPU machine, into .device/ (git-ignored), as
# ../shared/device/prepare.sh does: the `xent` binary, the GPU test executables and the
# amd64 Vulkan / EGL loader packages; and burn's comparison (`bench_vs_burn`), this
# directory's scripts, the binaries xz-compressed to fit the device tool's 64 MiB carry.
# Run from anywhere; then, with the device tool: `run` with carry [".device"] and command
# `bash .device/run.sh linear` (then `short`), timeout_s 480 (run.sh keeps to 420 s).
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.device/' "$exclude" 2>/dev/null || echo '/.device/' >> "$exclude"
rm -rf .device && mkdir -p .device/gl .device/tests
cargo build --release --bin xent
cp target/release/xent .device/
# The integration tests that exercise the GPU, in release mode.
cargo test --release --no-run --message-format=json 2>/tmp/xent-device-build.log \
  | python3 -c 'import json,sys
for l in sys.stdin:
    try: m=json.loads(l)
    except Exception: continue
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["kind"]==["test"]: print(m["target"]["name"], m["executable"])' \
  | while read -r name exe; do
      case "$name" in *gpu*|*focal*|*shard*|*linear*|*device*|*softmax*|*bindings*|*windows*|*same_bits*) cp "$exe" ".device/tests/$name" ;; esac
    done
cargo build --release -p xent-burn --example bench_vs_burn
cp target/release/examples/bench_vs_burn .device/
strip .device/xent .device/bench_vs_burn .device/tests/* 2>/dev/null || true
# Vulkan / EGL loaders for the GPU machine (amd64 Debian packages).
mkdir -p /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
apt-get $o update -qq >/dev/null
(cd .device/gl && apt-get $o download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 >/dev/null)
cp device/run.sh device/torch_bench.py .device/
[ -n "$(ls .device/tests)" ] || { echo "prepare: no GPU test executables (see /tmp/xent-device-build.log)" >&2; exit 1; }
xz -T0 -6 .device/xent .device/bench_vs_burn .device/tests/*
du -sh .device
size=$(du -sm .device | cut -f1)
[ "$size" -lt 64 ] || { echo "prepare: .device is ${size} MiB, over the 64 MiB carry" >&2; exit 1; }
