"""Feature-extraction throughput of the default backbone on CIFAR-10 JPEGs.

Measures, in one run and interleaved (bare, full, bare, full, …) so machine noise hits both alike:
  * full: decode + preprocess (DataLoader workers) + normalise + forward, through ``extract_features``;
  * bare: normalise + forward on tensors decoded beforehand;
  * bare, contiguous (NCHW) input: what extraction did before it switched to channels-last input;
  * full with ``precision="bfloat16"`` (CPU autocast; oneDNN's AMX kernels where the CPU has them);
and reports images/s of each (median over repeats), the ratio full / bare (target ≥ 0.85), the channels-last
speed-up, the bfloat16 speed-up and how far bfloat16 features are from float32 ones (cosine).

    .venv/bin/python benchmarks/extract.py [--images 1024] [--repeats 3] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, require_cifar10, save_result  # noqa: E402

from imgclust.backbones import create_backbone  # noqa: E402
from imgclust.data import PathListDataset  # noqa: E402
from imgclust.features import extract_features  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    root = require_cifar10()
    per_class = max(1, args.images // 10)
    paths = [p for c in sorted((root / "train").iterdir()) for p in sorted(c.glob("*.jpg"))[:per_class]]
    dataset = PathListDataset([str(p) for p in paths])
    backbone = create_backbone(args.backbone).to(args.device).eval()
    device = torch.device(args.device)
    pre = backbone.preprocess
    decoded = torch.stack([pre.to_uint8_tensor(dataset.load(i)) for i in range(len(dataset))])
    mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)

    def bare(memory_format: torch.memory_format = torch.channels_last) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, len(decoded), args.batch_size):
                x = decoded[start:start + args.batch_size].to(device).float().div_(255)
                backbone(((x - mean) / std).contiguous(memory_format=memory_format)).cpu()
        return len(decoded) / (time.perf_counter() - started)

    features: dict[str, np.ndarray] = {}

    def full(precision: str = "float32") -> float:
        with tempfile.TemporaryDirectory() as cache:
            started = time.perf_counter()
            result = extract_features(dataset, backbone, cache_dir=cache, device=device, precision=precision,
                                      batch_size=args.batch_size, num_workers=args.workers, progress=False)
            rate = len(dataset) / (time.perf_counter() - started)
            features[precision] = np.array(result.features)
            return rate

    bare()  # warm-up: first forward passes allocate and pick kernels
    bare_rates, full_rates, nchw_rates, bf16_rates = [], [], [], []
    for _ in range(args.repeats):
        bare_rates.append(bare())
        full_rates.append(full())
        nchw_rates.append(bare(torch.contiguous_format))
        bf16_rates.append(full("bfloat16"))
    bare_rate, full_rate = statistics.median(bare_rates), statistics.median(full_rates)
    nchw_rate, bf16_rate = statistics.median(nchw_rates), statistics.median(bf16_rates)
    exact, fast = features["float32"], features["bfloat16"]
    cosine = (exact * fast).sum(1) / (np.linalg.norm(exact, axis=1) * np.linalg.norm(fast, axis=1))
    rows = [{"stage": "bare forward (pre-decoded tensors, channels-last)", "images_per_s": bare_rate},
            {"stage": "full extraction (decode+preprocess+forward)", "images_per_s": full_rate},
            {"stage": "ratio full / bare (target ≥ 0.85)", "images_per_s": full_rate / bare_rate},
            {"stage": "bare forward, contiguous NCHW input (before)", "images_per_s": nchw_rate},
            {"stage": "speed-up channels-last / NCHW", "images_per_s": bare_rate / nchw_rate},
            {"stage": "full extraction, precision=bfloat16", "images_per_s": bf16_rate},
            {"stage": "speed-up bfloat16 / float32 (full)", "images_per_s": bf16_rate / full_rate},
            {"stage": "min cosine(bfloat16, float32 features)", "images_per_s": float(cosine.min())}]
    table = print_table(rows, ["stage", "images_per_s"])
    path = save_result("extract", {
        "backbone": args.backbone, "images": len(dataset), "batch_size": args.batch_size,
        "workers": args.workers, "device": args.device, "input_size": pre.input_size,
        "bare_images_per_s": bare_rate, "full_images_per_s": full_rate, "ratio": full_rate / bare_rate,
        "nchw_images_per_s": nchw_rate, "channels_last_speedup": bare_rate / nchw_rate,
        "bf16_images_per_s": bf16_rate, "bf16_speedup": bf16_rate / full_rate,
        "bf16_cosine_min": float(cosine.min()), "bf16_cosine_median": float(np.median(cosine)),
        "cpu_bf16_kernels": _cpu_bf16_kernels(), "bare_runs": bare_rates, "full_runs": full_rates,
        "nchw_runs": nchw_rates, "bf16_runs": bf16_rates, "table": table})
    print(f"wrote {path}")


def _cpu_bf16_kernels() -> dict[str, bool]:
    """The CPU's bfloat16 instructions (the speed-up depends on them), from /proc/cpuinfo where there is one."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    return {"amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags}


if __name__ == "__main__":
    main()
