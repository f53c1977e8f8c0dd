"""Is the built-in model's latent what keeps its shapes blobs? (docs/training.md, "Where issue 29 stops")

    python scripts/latent_trials.py roundtrip --out roundtrip.png   # training clips vs their PCA round trip
    python scripts/latent_trials.py autoencoder                     # a learned 64-px autoencoder vs PCA

`roundtrip`: two v2 training clips at 32 px (frames 0, 2, 4, 6, 3x bicubic) beside the shipped PCA autoencoder's
encode -> decode of them: what a perfect DiT sample would look like. `autoencoder`: a conv autoencoder with the
8x8 latent grid the DiT needs at 64 px (three stride-2 convs down, 16 channels; upsample + conv blocks back), L1
loss with noise on the latent, trained on 1,500 v2 clips (12,000 frames) for `--iters` steps of 32 frames; its
PSNR on 100 other frames beside that of a PCA latent (8x8 blocks, 32 channels: configs/builtin_v2.json's)
fitted on the same training frames. Seeded; prints seconds, so the CPU time it took can be read off.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lumina_rt.builtin import builtin_dir
from lumina_rt.components.tiny import PCAAutoencoder
from lumina_rt.data.dataset import SyntheticDataset


def frames_of(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, F, H, W] -> [B * F, 3, H, W]."""
    return x.permute(0, 2, 1, 3, 4).reshape(-1, 3, x.shape[-2], x.shape[-1])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of images in [-1, 1] (the same as of [0, 1] images)."""
    return float(10 * torch.log10(4 / (a.clamp(-1, 1) - b).pow(2).mean()))


def roundtrip(out: str) -> None:
    ae = PCAAutoencoder.load(builtin_dir())
    batch = SyntheticDataset(0, caption_set="v2").video_batch(777, 4, size=32, frames=8)
    rows = []
    for i in (2, 3):
        x = batch.x[i : i + 1]
        pieces = [(x + 1) / 2, ae.decode(ae.encode(x))]
        rows.append(torch.cat([f for p in pieces for f in frames_of(p)[::2]], -1))
        db = psnr(ae.decode_pixels(ae.encode(x)), x)
        print(f"row {len(rows)}: {batch.captions[i]!r}, PCA round trip {db:.1f} dB")
    img = F.interpolate(torch.cat(rows, -2)[None], scale_factor=3, mode="bicubic")[0].clamp(0, 1)
    Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(out)
    print(f"wrote {out}")


def _block(ci: int, co: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ci, co, 3, padding=1), nn.SiLU(), nn.Conv2d(co, co, 3, padding=1), nn.SiLU())


class ConvAutoencoder(nn.Module):
    """64x64 frames <-> [channels, 8, 8] latents."""

    def __init__(self, channels: int = 16, width: int = 32):
        super().__init__()
        w = width
        down = []
        for ci, co in ((3, w), (w, 2 * w), (2 * w, 4 * w)):
            down += [nn.Conv2d(ci, co, 3, padding=1), nn.SiLU(), nn.Conv2d(co, co, 4, 2, 1), nn.SiLU()]
        self.encoder = nn.Sequential(*down, nn.Conv2d(4 * w, channels, 3, padding=1))
        up = [nn.Conv2d(channels, 4 * w, 3, padding=1), nn.SiLU(), _block(4 * w, 4 * w)]
        for ci, co in ((4 * w, 2 * w), (2 * w, w), (w, w)):
            up += [nn.Upsample(scale_factor=2), _block(ci, co)]
        self.decoder = nn.Sequential(*up, nn.Conv2d(w, 3, 3, padding=1))

    def forward(self, x: torch.Tensor, noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return self.decoder(z + noise * torch.randn_like(z)), z


def autoencoder(iters: int) -> None:
    torch.manual_seed(0)
    start = time.perf_counter()
    ds = SyntheticDataset(0, caption_set="v2")
    clips = torch.cat([ds.video_batch(5000 + s, 16, size=64, frames=8).x for s in range(100)])
    train, test = clips[:-100], clips[-100:]
    frames, test_frames = frames_of(train), frames_of(test)[::8]  # 12,000 training frames; frame 0 of 100 other clips
    pca = PCAAutoencoder.fit(train, channels=32, factor=8)
    pca_db = psnr(frames_of(pca.decode_pixels(pca.encode(test[:, :, :1]))), test_frames)
    print(f"data and PCA fit: {time.perf_counter() - start:.0f} s; PCA (8x8 blocks, 32 channels): {pca_db:.1f} dB")
    net = ConvAutoencoder()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    print(f"conv autoencoder: {sum(p.numel() for p in net.parameters()):,} parameters")
    for it in range(iters):
        x = frames[torch.randint(0, len(frames), (32,))]
        y, z = net(x, noise=0.1)
        loss = (y - x).abs().mean() + 1e-3 * z.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it == int(iters * 0.8):
            for group in opt.param_groups:
                group["lr"] = 2e-4
        if it % 250 == 0 or it == iters - 1:
            with torch.no_grad():
                db = psnr(net(test_frames)[0], test_frames)
            print(f"step {it}: loss {loss.item():.4f}, test {db:.1f} dB, {time.perf_counter() - start:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="trial", required=True)
    sub.add_parser("roundtrip").add_argument("--out", default="roundtrip.png")
    sub.add_parser("autoencoder").add_argument("--iters", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    roundtrip(args.out) if args.trial == "roundtrip" else autoencoder(args.iters)


if __name__ == "__main__":
    main()
