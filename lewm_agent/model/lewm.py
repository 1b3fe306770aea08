"""LeWM: encoder + projector -> latent z; action Embedder + causal AdaLN predictor + projector -> next z.

Trained end to end with two losses: next-embedding MSE (teacher forcing, no stop-gradient, no EMA) and
SIGReg on every frame's embedding, weighted by ``sigreg_weight`` (lambda = 0.09, the official value).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .predictor import ActionEmbedder, MLPProjector, Predictor
from .sigreg import SIGReg
from .vit import ViTEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class LeWMConfig:
    """Every architectural and loss setting of a LeWM. ``action_dim`` is the width of one env step's
    action features (one-hot width for discrete actions); the predictor sees blocks of
    ``action_block`` (= frameskip) steps."""

    action_dim: int
    action_block: int = 5
    image_size: int = 224
    patch_size: int = 14
    enc_dim: int = 192
    enc_depth: int = 12
    enc_heads: int = 3
    enc_mlp_dim: int = 768
    embed_dim: int = 192
    proj_hidden: int = 2048
    pred_depth: int = 6
    pred_heads: int = 16
    pred_dim_head: int = 64
    pred_mlp_dim: int = 2048
    dropout: float = 0.1
    history: int = 3
    action_smoothed_dim: int = 10
    action_mlp_ratio: int = 4
    sigreg_weight: float = 0.09
    sigreg_knots: int = 17
    sigreg_num_proj: int = 1024
    sigreg_variant: str = "official"

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (not isinstance(v, int) or v < 1):
                raise ValueError(f"LeWMConfig.{f.name} must be a positive integer, got {v!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LeWMConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def action_block_dim(self) -> int:
        return self.action_block * self.action_dim


# The official architecture (ViT-Tiny/14 at 224 px, 18,034,478 parameters for 2-D actions, block 5).
_PAPER = {}
# 64-px presets for CPUs: `small` keeps the 192-d latent; `tiny` trains in minutes on two cores and
# plans a full 300 x 30 CEM in a fraction of a second.
_SMALL = dict(
    image_size=64, patch_size=8, enc_depth=6, proj_hidden=1024,
    pred_depth=4, pred_heads=8, pred_dim_head=32, pred_mlp_dim=768,
)
_TINY = dict(
    image_size=64, patch_size=16, enc_dim=128, enc_depth=4, enc_heads=4, enc_mlp_dim=512,
    embed_dim=64, proj_hidden=512, pred_depth=3, pred_heads=4, pred_dim_head=32, pred_mlp_dim=256,
)
PRESETS: dict[str, dict] = {"paper": _PAPER, "small": _SMALL, "tiny": _TINY}


def preset_config(name: str, action_dim: int, action_block: int = 5, **overrides) -> LeWMConfig:
    """The config of preset ``name`` for ``action_dim``-wide step actions, with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in fields(LeWMConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown LeWMConfig settings {bad}; valid settings: {sorted(known)}")
    return LeWMConfig(action_dim=action_dim, action_block=action_block, **{**PRESETS[name], **overrides})


class LeWM(nn.Module):
    """The world model. Shapes: B batch, T time steps, D = ``embed_dim``, A = ``action_block_dim``."""

    def __init__(self, config: LeWMConfig):
        super().__init__()
        c = self.config = config
        self.encoder = ViTEncoder(c.image_size, c.patch_size, c.enc_dim, c.enc_depth, c.enc_heads, c.enc_mlp_dim)
        self.projector = MLPProjector(c.enc_dim, c.proj_hidden, c.embed_dim)
        self.action_encoder = ActionEmbedder(c.action_block_dim, c.embed_dim, c.action_smoothed_dim, c.action_mlp_ratio)
        self.predictor = Predictor(
            c.embed_dim, c.pred_depth, c.pred_heads, c.pred_dim_head, c.pred_mlp_dim, c.dropout, c.history
        )
        self.pred_proj = MLPProjector(c.embed_dim, c.proj_hidden, c.embed_dim)
        self.sigreg = SIGReg(c.sigreg_knots, c.sigreg_num_proj, c.sigreg_variant)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    @classmethod
    def from_preset(cls, name: str, action_dim: int, action_block: int = 5, **overrides) -> "LeWM":
        return cls(preset_config(name, action_dim, action_block, **overrides))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- the three maps -------------------------------------------------------------------------

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frames ``[B, T, 3, S, S]`` (uint8, or float in [0, 1]) -> embeddings ``[B, T, D]``."""
        b, t = pixels.shape[:2]
        x = pixels.flatten(0, 1).to(self.pixel_mean.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = (x - self.pixel_mean) / self.pixel_std
        return self.projector(self.encoder(x)).view(b, t, -1)

    def encode_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Action blocks ``[..., T, A]`` -> action embeddings ``[..., T, D]``."""
        if actions.shape[-1] != self.config.action_block_dim:
            raise ValueError(
                f"action blocks have {actions.shape[-1]} values per step but the model expects "
                f"{self.config.action_block_dim} (= action_block {self.config.action_block} x action_dim "
                f"{self.config.action_dim})"
            )
        return self.action_encoder(actions)

    def predict(self, emb: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Teacher-forced prediction: ``emb [B, T, D]``, ``actions [B, T, A]`` -> ``[B, T, D]`` where
        output t predicts the embedding of frame t + 1 from frames and actions 0..t (T <= history)."""
        return self.pred_proj(self.predictor(emb, self.encode_actions(actions)))

    # -- training ---------------------------------------------------------------------------------

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch["pixels"] [B, T, 3, S, S]``, ``batch["action"] [B, T, A]`` with T = history + 1.

        pred_loss is the MSE between the predictions from frames 0..T-2 and the embeddings of frames
        1..T-1 (averaged over every element, as the official code does); sigreg_loss is SIGReg over the
        batch for each of the T frames.
        """
        pixels, actions = batch["pixels"], batch["action"].float()
        h = self.config.history
        if pixels.shape[1] != h + 1 or actions.shape[1] != h + 1:
            raise ValueError(
                f"training windows need history + 1 = {h + 1} frames and action blocks, got "
                f"{pixels.shape[1]} frames and {actions.shape[1]} action blocks"
            )
        emb = self.encode(pixels)
        pred = self.predict(emb[:, :h], actions[:, :h].to(emb.device))
        pred_loss = F.mse_loss(pred, emb[:, 1:])
        sigreg_loss = self.sigreg(emb.transpose(0, 1))
        return {
            "loss": pred_loss + self.config.sigreg_weight * sigreg_loss,
            "pred_loss": pred_loss,
            "sigreg_loss": sigreg_loss,
        }

    # -- planning ---------------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, emb_hist: torch.Tensor, act_hist: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
        """Autoregressive imagination from a real history under candidate plans.

        ``emb_hist [B, h, D]``: embeddings of the last h frames (h <= history, the newest last);
        ``act_hist [B, h - 1, A]``: the action blocks executed between them;
        ``plans [B, S, H, A]``: S candidate plans of H blocks each, starting at the newest frame.
        Returns the predicted embeddings ``[B, S, H, D]`` after each planned block. The context is
        truncated to the last ``history`` steps, as in the official rollout.
        """
        return self._rollout(emb_hist, act_hist, plans)

    def rollout_with_grad(self, emb_hist, act_hist, plans):
        """:meth:`rollout` with autograd enabled (for gradient-based planners)."""
        return self._rollout(emb_hist, act_hist, plans)

    def _rollout(self, emb_hist: torch.Tensor, act_hist: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
        b, s, horizon, _ = plans.shape
        hist = self.config.history
        h = emb_hist.shape[1]
        if act_hist.shape[1] != h - 1:
            raise ValueError(f"act_hist must hold h - 1 = {h - 1} blocks for {h} history frames, got {act_hist.shape[1]}")
        emb_hist, act_hist = emb_hist[:, -hist:], act_hist[:, act_hist.shape[1] - min(h, hist) + 1 :]
        # Each action's AdaLN modulations are fixed for the whole rollout: compute them once per
        # block instead of once per rollout step (a third of the predictor's per-token work).
        act_emb = self.encode_actions(torch.cat([act_hist.unsqueeze(1).expand(-1, s, -1, -1), plans], dim=2))
        mods = self.predictor.modulations(act_emb.flatten(0, 1))  # per block: [B*S, h-1+H, 6D]
        ctx = emb_hist.unsqueeze(1).expand(-1, s, -1, -1).flatten(0, 1)  # [B*S, h, D]
        first = ctx.shape[1] - 1  # index in act_emb of the action paired with the newest frame
        preds = []
        for step in range(horizon):
            lo = first + step - ctx.shape[1] + 1
            out = self.predictor(ctx, mods=[m[:, lo : first + step + 1] for m in mods])
            nxt = self.pred_proj(out[:, -1:])
            preds.append(nxt)
            ctx = torch.cat([ctx, nxt], dim=1)[:, -hist:]
        return torch.cat(preds, dim=1).view(b, s, horizon, -1)


def config_to_dict(config: LeWMConfig) -> dict:
    return asdict(config)


def config_from_dict(d: dict) -> LeWMConfig:
    known = {f.name for f in fields(LeWMConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"checkpoint config has settings this version does not know: {unknown}")
    return LeWMConfig(**d)


__all__ = ["LeWM", "LeWMConfig", "PRESETS", "preset_config", "config_to_dict", "config_from_dict"]
