"""ISSBA: an invisible, image-specific residual that encodes a fixed secret (docs/methods.md 1.5).

The project trains its own small StegaStamp-style encoder/decoder on the shared images (the
reference's is trained for 32-px CIFAR and never stores its secret). The encoder turns (secret,
image) into a residual; the decoder must read the secret back, so the residual carries a
consistent signal a backdoored CLIP can learn. Channel widths are half of StegaStamp's; LPIPS
(which needs downloaded AlexNet weights) is replaced by 1 - SSIM from torchmetrics, as
docs/methods.md says. Bit accuracy and PSNR on held-out images are reported after fitting.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure
from tqdm import tqdm

from clip_backdoor.core.errors import ConfigError
from clip_backdoor.core.registry import TRIGGERS
from clip_backdoor.triggers.base import Trigger, seeded_generator
from clip_backdoor.triggers.fitting import FitData, as_float

ACCEPT_BIT_ACCURACY, ACCEPT_PSNR = 0.95, 27.0  # docs/methods.md 1.5's bar for a usable encoder


def _conv(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    if k == 2:  # StegaStamp's 2x2 up-convolutions keep the size: pad right and bottom
        return nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(cin, cout, 2), nn.ReLU())
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding=k // 2), nn.ReLU())


class StegaEncoder(nn.Module):
    """U-Net over [secret plane, image - 0.5] -> residual; widths 16-128 (StegaStamp halved)."""

    def __init__(self, bits: int, size: int) -> None:
        super().__init__()
        if size % 16:
            raise ConfigError(f"ISSBA needs an image size divisible by 16, got {size}")
        self.size = size
        self.secret = nn.Linear(bits, 3 * size * size)
        self.down = nn.ModuleList(
            [_conv(6, 16), _conv(16, 16, 2), _conv(16, 32, 2), _conv(32, 64, 2), _conv(64, 128, 2)]
        )
        widths = [(128, 64, 64), (64, 32, 32), (32, 16, 16), (16, 16, 16)]
        self.up = nn.ModuleList([_conv(a, b, k=2) for a, b, _ in widths])
        self.merge = nn.ModuleList([_conv(b + s, b) for _, b, s in widths])
        self.final = _conv(16 + 16 + 6, 16)
        self.out = nn.Conv2d(16, 3, 1)

    def forward(self, secret: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        plane = F.relu(self.secret(secret)).view(-1, 3, self.size, self.size)
        x = torch.cat([plane.expand(len(images), -1, -1, -1), images - 0.5], dim=1)
        skips, h = [], x
        for layer in self.down:
            h = layer(h)
            skips.append(h)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
            h = up(F.interpolate(h, scale_factor=2, mode="nearest"))
            h = merge(torch.cat([h, skip], dim=1))
        return self.out(self.final(torch.cat([skips[0], h, x], dim=1)))


class StegaDecoder(nn.Module):
    """A small spatial transformer, then a conv stack and dense layers -> bit logits."""

    def __init__(self, bits: int, size: int) -> None:
        super().__init__()
        flat = 64 * (size // 16) ** 2
        self.localise = nn.Sequential(
            _conv(3, 16, 2), _conv(16, 32, 2), _conv(32, 64, 2), nn.Flatten(), nn.LazyLinear(6)
        )
        self.features = nn.Sequential(
            _conv(3, 16, 2), _conv(16, 32), _conv(32, 32, 2), _conv(32, 64, 2), _conv(64, 64, 2)
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 256), nn.ReLU(), nn.Linear(256, bits)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        theta = self.localise(images - 0.5)
        identity = torch.tensor([1.0, 0, 0, 0, 1, 0], device=images.device)
        theta = (identity + 0.1 * torch.tanh(theta)).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        warped = F.grid_sample(images - 0.5, grid, align_corners=False)
        return self.head(self.features(warped))


@TRIGGERS.register("issba")
class ISSBA(Trigger):
    name = "issba"
    needs_fit = True

    def __init__(
        self,
        *,
        image_size: int = 224,
        bits: int = 20,
        epochs: int = 8,
        n_images: int = 2048,
        batch_size: int = 32,
        lr: float = 1e-4,
        secret_only_epochs: int = 2,
        seed: int = 0,
    ) -> None:
        self.bits, self.size = int(bits), int(image_size)
        self.options = dict(epochs=epochs, n_images=n_images, batch_size=batch_size, lr=lr)
        self.options["secret_only_epochs"] = secret_only_epochs
        generator = seeded_generator(seed)
        torch.manual_seed(seed)  # the networks' initial weights
        self.encoder = StegaEncoder(self.bits, self.size).eval()
        self.secret = torch.randint(0, 2, (self.bits,), generator=generator).float()
        self.seed = seed
        self.report: dict = {}

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.shape[-1] != self.size or images.shape[-2] != self.size:
            raise ConfigError(
                f"ISSBA's encoder works at {self.size} px, got {tuple(images.shape[-2:])}"
            )
        with torch.no_grad():
            residual = self.encoder(self.secret[None].to(images), images)
        return (images + residual).clamp(0, 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        return {**state, "secret": self.secret}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = self.state_dict()
        if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
            raise ConfigError("ISSBA state does not match its encoder (keys or shapes differ)")
        self.secret = state["secret"].float().clone()
        self.encoder.load_state_dict({k[8:]: v for k, v in state.items() if k != "secret"})

    def fit(self, fit: FitData) -> None:
        """Train encoder + decoder on the candidates; report bit accuracy and PSNR held out."""
        opts = self.options
        generator = seeded_generator(self.seed)
        order = torch.randperm(len(fit.candidates), generator=generator)
        held = fit.candidates[order[:256]]
        images = fit.candidates[order[256 : 256 + opts["n_images"]]]
        torch.manual_seed(self.seed)
        decoder = StegaDecoder(self.bits, self.size)
        decoder(torch.zeros(1, 3, self.size, self.size))  # materialise the lazy layer
        params = list(self.encoder.parameters()) + list(decoder.parameters())
        optimiser = torch.optim.Adam(params, lr=opts["lr"])
        steps = len(images) // opts["batch_size"]
        self.encoder.train()
        bar = tqdm(total=opts["epochs"] * steps, disable=not fit.progress, desc="issba")
        for epoch in range(opts["epochs"]):
            perm = torch.randperm(len(images), generator=generator)
            for step in range(steps):
                batch = as_float(
                    images[perm[step * opts["batch_size"] : (step + 1) * opts["batch_size"]]]
                )
                secrets = torch.randint(0, 2, (len(batch), self.bits), generator=generator).float()
                encoded = (batch + self.encoder(secrets, batch)).clamp(0, 1)
                loss = 1.5 * F.binary_cross_entropy_with_logits(decoder(encoded), secrets)
                if epoch >= opts["secret_only_epochs"]:
                    ssim = structural_similarity_index_measure(encoded, batch, data_range=1.0)
                    loss = loss + 2 * ((encoded - batch) ** 2).mean() + 1.5 * (1 - ssim)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                bar.update(1)
        bar.close()
        self.encoder.eval()
        self.report = self._evaluate(decoder, held)
        accepted = (
            self.report["bit_accuracy"] >= ACCEPT_BIT_ACCURACY
            and (self.report["psnr"] or 0) >= ACCEPT_PSNR
        )
        self.report["accepted"] = accepted
        below = f" (below the bar: bit accuracy >= {ACCEPT_BIT_ACCURACY}, PSNR >= {ACCEPT_PSNR} dB)"
        fit.log(f"ISSBA held-out: {self.report}" + ("" if accepted else below))

    @torch.no_grad()
    def _evaluate(self, decoder: nn.Module, held: torch.Tensor) -> dict:
        clean = as_float(held)
        encoded = self.apply(clean)
        bits = (decoder(encoded) > 0).float()
        accuracy = float((bits == self.secret).float().mean())
        mse = ((encoded - clean) ** 2).flatten(1).mean(dim=1).clamp_min(1e-12)
        psnr = float((10 * torch.log10(1 / mse)).mean())
        return {"bit_accuracy": accuracy, "psnr": psnr if math.isfinite(psnr) else None}
