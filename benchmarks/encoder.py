"""Encoder pre-training throughput (img/s): the small CPU encoder against ResNet-18, and ResNet-18 on CUDA.

Usage:
    python benchmarks/encoder.py                  # CPU: small encoder vs ResNet-18 (the paper's backbone)
    python benchmarks/encoder.py --device cuda    # CUDA: ResNet-18 84x84, bf16 autocast + channels-last vs fp32
    python benchmarks/encoder.py --quick          # fewer timed steps

One training step = augmentation (random crop 96 -> 84, pixel noise, ImageNet normalisation) + encoder
forward + soft InfoNCE + backward + optimizer step, on a batch of random uint8 96x96 images, exactly as
`class-ros pretrain` does it (the same modules, without the data store). Each configuration is warmed
up, then timed; img/s = batch * steps / seconds. Ratios are against the peer measured in the same run:
on CPU the peer is ResNet-18 fp32 (what the paper uses), on CUDA ResNet-18 fp32 without channels-last.
On CPU, img per CPU-second is printed too: wall time on a shared machine mostly measures the other
processes, CPU time much less so (run with --threads 1 for the cleanest number).
Target (issue 6): >= 10,000 img/s for ResNet-18 84x84 with AMP on one H100.

Needs only torch and torchvision (no zarr, faiss or diffusers), so it runs on a bare GPU machine.
Results go to benchmarks/results/encoder.json (or --out).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.machine import cpu_line, time_steps  # noqa: E402 - after the path set-up
from class_ros.data.outputs import write_json  # noqa: E402


def measure(backbone: str, device: str, batch: int, steps: int, amp: bool, channels_last: bool,
            optimizer: str = "adamw", warmup: int = 3) -> dict:
    """Training img/s of one encoder configuration."""
    import torch

    from class_ros.encoder.config import EncoderConfig
    from class_ros.encoder.lars import LARS
    from class_ros.encoder.loss import soft_infonce
    from class_ros.encoder.model import ObservationEncoder

    torch.manual_seed(0)
    cfg = EncoderConfig(backbone=backbone, image_keys=["cam"], image_size=[96, 96], crop_size=84)
    enc = ObservationEncoder(cfg).to(device).train()
    if channels_last:
        enc.use_channels_last()  # as pretrain runs it
    opt = LARS(enc.parameters(), lr=0.4) if optimizer == "lars" else torch.optim.AdamW(enc.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (batch, 96, 96, 3), dtype=torch.uint8, device=device)
    weights = (torch.rand(batch, batch, device=device) < 0.05).float()
    weights = torch.maximum(weights, weights.T)
    on_cuda = device.startswith("cuda")
    torch.backends.cudnn.benchmark = on_cuda  # as pretrain sets it

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda and amp):
            z = enc.image_features({"cam": images}, train=True)
        loss = soft_infonce(z, weights, 0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds, cpu_seconds = time_steps(step, steps, warmup, on_cuda)
    return {"backbone": backbone, "device": device, "batch": batch, "steps": steps, "amp": amp and on_cuda,
            "channels_last": channels_last, "optimizer": optimizer, "seconds": seconds,
            "img_per_s": batch * steps / seconds, "img_per_cpu_s": batch * steps / cpu_seconds}


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "encoder.json"))
    args = parser.parse_args(argv)
    print(cpu_line(), flush=True)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("encoder benchmark: --device cuda asked for but CUDA is not available; nothing measured.")
        return 1

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    if args.device == "cpu":
        steps = 3 if args.quick else 10
        print(f"CPU, {torch.get_num_threads()} threads, batch 64, 96x96 -> 84x84 crops, AdamW")
        small = measure("small", "cpu", 64, steps, amp=False, channels_last=True)
        peer = measure("resnet18", "cpu", 64, max(2, steps // 3), amp=False, channels_last=True, warmup=1)
        rows = [small, peer]
        for name, r in (("small encoder", small), ("ResNet-18 (peer)", peer)):
            print(f"  {name:17s} {r['img_per_s']:7.0f} img/s  {r['img_per_cpu_s']:7.0f} img per CPU-second")
        print(f"  small / ResNet-18 = {small['img_per_s'] / peer['img_per_s']:.1f}x wall, "
              f"{small['img_per_cpu_s'] / peer['img_per_cpu_s']:.1f}x CPU time")
    else:
        steps = 10 if args.quick else 50
        print(f"{torch.cuda.get_device_name()}: ResNet-18, 84x84 crops, batch 160, LARS (GPU preset)")
        fast = measure("resnet18", args.device, 160, steps, amp=True, channels_last=True, optimizer="lars")
        big = measure("resnet18", args.device, 512, steps, amp=True, channels_last=True, optimizer="lars")
        peer = measure("resnet18", args.device, 160, steps, amp=False, channels_last=False, optimizer="lars")
        small = measure("small", args.device, 512, steps, amp=True, channels_last=True)
        rows = [fast, big, peer, small]
        print(f"  bf16 + channels-last, B=160 {fast['img_per_s']:9.0f} img/s   (target >= 10,000)")
        print(f"  bf16 + channels-last, B=512 {big['img_per_s']:9.0f} img/s")
        print(f"  fp32 (peer),          B=160 {peer['img_per_s']:9.0f} img/s")
        print(f"  small encoder bf16,   B=512 {small['img_per_s']:9.0f} img/s")
        print(f"  AMP / fp32 = {fast['img_per_s'] / peer['img_per_s']:.2f}x")
    out = write_json(args.out, {"machine": platform.node(), "torch": torch.__version__, "rows": rows})
    print(f"encoder benchmark: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
