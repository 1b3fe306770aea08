"""Training throughput of each LeWM preset: one optimizer step = forward + backward + AdamW step.

Synthetic batches of history + 1 = 4 frames and 2-D action blocks (frameskip 5); a few warm-up steps,
then the median of timed steps. Prints a Markdown table (sequences/s and images/s, images = 4 frames
per sequence). Runs on the CPU, and on CUDA too when available (bf16 autocast there, like the trainer).

    python benchmarks/train_speed.py [--steps 5] [--warmup 2] [--presets tiny small paper]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lewm_agent.model import PRESETS, LeWM
from lewm_agent.train.trainer import _LossModule

# Batch sizes per device: the paper's 128 on GPU; on CPU the paper preset gets 8 (a step at 224 px
# takes seconds there) and the 64-px presets 32.
CPU_BATCH = {"paper": 8}
CPU_DEFAULT_BATCH = 32
CUDA_BATCH = 128


def time_steps(preset: str, device: torch.device, batch_size: int, steps: int, warmup: int) -> list[float]:
    """Seconds per training step of ``preset`` on ``device``."""
    torch.manual_seed(0)
    model = LeWM.from_preset(preset, action_dim=2).to(device).train()
    c = model.config
    step_module = _LossModule(model)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=1e-3)
    t = c.history + 1
    batch = {"pixels": torch.randint(0, 256, (batch_size, t, 3, c.image_size, c.image_size), dtype=torch.uint8,
                                     device=device),
             "action": torch.randn(batch_size, t, c.action_block_dim, device=device)}
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = step_module(batch)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per preset")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=None, help="override the per-device defaults")
    args = parser.parse_args()

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print()
    print("| preset | device | params | image px | batch | s/step | sequences/s | images/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for device in devices:
        for preset in args.presets:
            bs = args.batch_size or (CUDA_BATCH if device.type == "cuda" else CPU_BATCH.get(preset, CPU_DEFAULT_BATCH))
            model = LeWM.from_preset(preset, action_dim=2)
            c, params = model.config, model.num_parameters()
            del model
            sec = statistics.median(time_steps(preset, device, bs, args.steps, args.warmup))
            seq = bs / sec
            print(f"| {preset} | {device.type} | {params / 1e6:.2f}M | {c.image_size} | {bs} | {sec:.3f} | "
                  f"{seq:.1f} | {seq * (c.history + 1):.1f} |", flush=True)


if __name__ == "__main__":
    main()
