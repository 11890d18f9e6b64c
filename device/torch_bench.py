"""PyTorch on the lent GPU, on the shapes `xent bench` timed there (device/run.sh), so that
each xent figure has a ratio measured in one run.

    python3 torch_bench.py linear --head NxDxV ...   cuBLAS's product (f32 without TF32, bf16),
                                                     F.linear + F.cross_entropy forward and
                                                     forward + backward, the f32 peak
    python3 torch_bench.py short --short | --shape NxC | --shape NxCxHxW ...
    python3 torch_bench.py long --shape NxC ...      F.cross_entropy forward, forward + backward,
                                                     a read (sum) and a copy of the logits

Times: CUDA events around `iters` calls after a warm-up, ms per call. One line per
measurement on stdout, and the same records as JSON in $OUT/torch-<mode>.json.
"""
import json
import os
import subprocess
import sys

SHORT = ["1048576x2", "1048576x10", "262144x100", "65536x1000", "16x21x512x512"]


def parse(argv):
    mode, shapes, i = argv[0], [], 1
    while i < len(argv):
        if argv[i] == "--short":
            shapes += SHORT
            i += 1
        elif argv[i] in ("--shape", "--head"):
            shapes.append(argv[i + 1])
            i += 2
        else:
            sys.exit(f"torch_bench: unknown argument {argv[i]}")
    return mode, [tuple(int(x) for x in s.split("x")) for s in shapes]


def main():
    mode, shapes = parse(sys.argv[1:])
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("torch_bench: no torch here: skipped")
        return
    if not torch.cuda.is_available():
        print("torch_bench: no CUDA device: skipped")
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    records = []

    def timed(f, iters=10):
        f()
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            f()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / iters

    def record(shape, dtype, what, ms, **extra):
        r = dict(shape="x".join(map(str, shape)), dtype=str(dtype).replace("torch.", ""),
                 what=what, ms=ms, **extra)
        records.append(r)
        tail = " ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in extra.items())
        print(f"torch {r['shape']:>18} {r['dtype']:>8} {what:<28} {ms:9.3f} ms {tail}", flush=True)

    if mode == "linear":
        props = torch.cuda.get_device_properties(0)
        try:
            clock = subprocess.run(
                ["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                capture_output=True, text=True).stdout.split()[0]
            # 128 f32 lanes per SM (Ampere, Hopper), an FMA being 2 FLOPs.
            peak = props.multi_processor_count * 128 * 2 * float(clock) * 1e6 / 1e12
            print(f"torch {props.name}: {props.multi_processor_count} SMs at {clock} MHz: "
                  f"f32 peak {peak:.1f} TFLOP/s (no tensor cores)")
            records.append(dict(what="f32-peak", tflops=peak, sms=props.multi_processor_count,
                                clock_mhz=float(clock)))
        except Exception as e:  # noqa: BLE001 (report, go on)
            print(f"torch_bench: no clock from nvidia-smi ({e})")
        for n, d, v in shapes:
            flops = 2.0 * n * d * v
            for dtype in (torch.float32, torch.bfloat16):
                h = torch.randn(n, d, device="cuda", dtype=dtype)
                w = torch.randn(v, d, device="cuda", dtype=dtype) / d ** 0.5
                b = torch.zeros(v, device="cuda", dtype=dtype)
                y = torch.randint(0, v, (n,), device="cuda")
                ms = timed(lambda: h @ w.t(), 5)
                record((n, d, v), dtype, "product", ms, tflops=flops / ms / 1e9)
                ms = timed(lambda: F.cross_entropy(F.linear(h, w, b).float(), y), 5)
                record((n, d, v), dtype, "materialized-forward", ms, tflops=flops / ms / 1e9)
                hg, wg, bg = (t.clone().requires_grad_(True) for t in (h, w, b))
                ms = timed(lambda: F.cross_entropy(F.linear(hg, wg, bg).float(), y).backward(), 3)
                record((n, d, v), dtype, "materialized-forward-backward", ms,
                       tflops=3 * flops / ms / 1e9,
                       peak_gb=torch.cuda.max_memory_allocated() / 1e9)
                del h, w, b, hg, wg, bg
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
    else:
        for shape in shapes:
            for dtype in (torch.float32, torch.bfloat16):
                if len(shape) == 2:
                    n, c = shape
                    x = torch.randn(n, c, device="cuda", dtype=dtype) * 4
                    y = torch.randint(0, c, (n,), device="cuda")
                else:
                    n, c = shape[0], shape[1]
                    x = torch.randn(*shape, device="cuda", dtype=dtype) * 4
                    y = torch.randint(0, c, (n, *shape[2:]), device="cuda")
                gb = x.numel() * x.element_size() / 1e9
                ms = timed(lambda: F.cross_entropy(x, y))
                record(shape, dtype, "forward", ms, gbps=gb / ms * 1e3)
                xg = x.detach().requires_grad_(True)
                ms = timed(lambda: F.cross_entropy(xg, y).backward())
                record(shape, dtype, "forward-backward", ms, gbps=2 * gb / ms * 1e3)
                ms = timed(lambda: x.sum())
                record(shape, dtype, "read (sum)", ms, gbps=gb / ms * 1e3)
                z = torch.empty_like(x)
                ms = timed(lambda: z.copy_(x))
                record(shape, dtype, "copy", ms, gbps=2 * gb / ms * 1e3)
                del x, xg, z
                torch.cuda.empty_cache()
    out = os.environ.get("OUT", "/tmp/out")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"torch-{mode}.json"), "w") as f:
        json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
