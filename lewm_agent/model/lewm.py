"""LeWM: encoder + projector -> latent z; action Embedder + causal AdaLN predictor + projector -> next z.

Trained end to end with two losses: next-embedding MSE (teacher forcing, no stop-gradient, no EMA) and
SIGReg on every frame's embedding, weighted by ``sigreg_weight`` (lambda = 0.09, the official value).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lewm_agent.config import PRECISIONS, PRESETS, LeWMConfig, config_from_dict, config_to_dict, preset_config

from .predictor import ActionEmbedder, MLPProjector, Predictor
from .sigreg import SIGReg
from .straightness import straightness_terms
from .vit import ViTEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# Rollouts on a CPU go in chunks of candidates whose widest activation is about this big (see
# LeWM._chunk_sizes): small enough to stay in the caches, big enough for efficient matmuls.
ROLLOUT_CHUNK_BYTES = 6 << 20


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


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
        self._compiled_imagine = None  # see compile_rollout

    @classmethod
    def from_preset(cls, name: str, action_dim: int, action_block: int = LeWMConfig.action_block,
                    **overrides) -> "LeWM":
        return cls(preset_config(name, action_dim, action_block, **overrides))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- the three maps -------------------------------------------------------------------------

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frames ``[B, T, 3, S, S]`` (uint8, or float in [0, 1]) -> embeddings ``[B, T, D]``."""
        cls = self.encode_cls(pixels)
        return self.projector(cls.flatten(0, 1)).view(*cls.shape[:2], -1)

    def encode_cls(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frames ``[B, T, 3, S, S]`` -> the ViT's CLS features ``[B, T, enc_dim]`` (before the projector)."""
        b, t = pixels.shape[:2]
        x = pixels.flatten(0, 1).to(self.pixel_mean.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = (x - self.pixel_mean) / self.pixel_std
        return self.encoder(x).view(b, t, -1)

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

        straightness (not part of the loss) is the mean cosine between consecutive latent velocities
        (:mod:`lewm_agent.model.straightness`). pred_loss is the MSE between the predictions from frames 0..T-2 and the embeddings of frames
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
            # Logged, not optimised: the paper's temporal straightness of the window's trajectory
            # (it needs two velocities: NaN for windows of two frames, history 1).
            "straightness": straightness_terms(emb.detach().float()).mean() if emb.shape[1] >= 3
            else emb.new_tensor(float("nan")),
        }

    # -- planning ---------------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(
        self, emb_hist: torch.Tensor, act_hist: torch.Tensor, plans: torch.Tensor,
        precision: str = PRECISIONS[0],
    ) -> torch.Tensor:
        """Autoregressive imagination from a real history under candidate plans.

        ``emb_hist [B, h, D]``: embeddings of the last h frames (h <= history, the newest last);
        ``act_hist [B, h - 1, A]``: the action blocks executed between them;
        ``plans [B, S, H, A]``: S candidate plans of H blocks each, starting at the newest frame.
        Returns the predicted embeddings ``[B, S, H, D]`` (float32) after each planned block. The
        context is truncated to the last ``history`` steps, as in the official rollout.

        ``precision="bf16"`` runs the rollout under bfloat16 autocast (matmuls in bf16, the residual
        stream in fp32): several times faster on CPUs with native bf16 (AVX-512 BF16, AMX) and on
        GPUs, at a relative error of about 0.5% on the final embedding; CEM plans then cost the same
        under the fp32 model (``benchmarks/plan_speed.py --compare``).
        """
        return self._rollout(emb_hist, act_hist, plans, precision)

    def rollout_with_grad(self, emb_hist, act_hist, plans, precision: str = PRECISIONS[0]):
        """:meth:`rollout` with autograd enabled (for gradient-based planners); never compiled."""
        return self._rollout(emb_hist, act_hist, plans, precision)

    def compile_rollout(self, enabled: bool = True) -> "LeWM":
        """Run :meth:`rollout` through ``torch.compile`` from now on (``enabled=False`` undoes it).

        The rollout of a small predictor is a chain of a few hundred small ops; compiled, they fuse
        into a few kernels and a CPU plan gets 1.2-3x faster (``benchmarks/plan_speed.py --rollout
        eager compiled``; the small presets gain most). The price is paid at the first rollout of
        each new shape (history length, batch, candidate count): about 40-60 s on two cores with
        torch's compile cache cold, a few seconds once it is warm (it persists on disk between
        processes). Results match the eager rollout to float rounding. Needs a C++ compiler on CPUs
        (inductor's code generator).
        """
        if enabled:
            # Each shape compiles once, and dynamo's per-function limit (8, then silent eager) counts
            # the shapes of every LeWM in the process together: 3 history lengths x 2 precisions x
            # chunk shapes is already more for one model.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self._compiled_imagine = torch.compile(self._imagine, dynamic=False) if enabled else None
        return self

    @property
    def rollout_compiled(self) -> bool:
        return self._compiled_imagine is not None

    def _rollout(self, emb_hist, act_hist, plans, precision: str = PRECISIONS[0]) -> torch.Tensor:
        check_precision(precision)
        h = emb_hist.shape[1]
        if act_hist.shape[1] != h - 1:
            raise ValueError(f"act_hist must hold h - 1 = {h - 1} blocks for {h} history frames, got {act_hist.shape[1]}")
        hist = self.config.history
        emb_hist, act_hist = emb_hist[:, -hist:], act_hist[:, act_hist.shape[1] - min(h, hist) + 1 :]
        envs, cands = self._chunk_sizes(*plans.shape[:2], emb_hist.device)
        compiled = self._compiled_imagine is not None and not torch.is_grad_enabled()
        imagine = self._compiled_imagine if compiled else self._imagine
        rows = []
        try:
            with torch.autocast(emb_hist.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                for e, a, p in zip(emb_hist.split(envs), act_hist.split(envs), plans.split(envs)):
                    rows.append(torch.cat([imagine(e, a, chunk).float() for chunk in p.split(cands, dim=1)], dim=1))
        except torch._dynamo.exc.BackendCompilerFailed as err:
            raise RuntimeError(
                f"compiling the rollout failed: {err}\nOn CPUs torch.compile needs a working C++ compiler "
                "(Debian/Ubuntu: apt install g++); or plan without it (drop --compile / compile=True, or call "
                "compile_rollout(False))"
            ) from err
        return torch.cat(rows)

    def _chunk_sizes(self, b: int, s: int, device: torch.device) -> tuple[int, int]:
        """(envs, candidates per env) per :meth:`_imagine` call. On a CPU the rollout is bound by memory
        traffic once its activations outgrow the caches (B = 50 envs x 300 candidates of the tiny preset
        ran 1.7x slower in one call than in chunks), so the B x S candidates go in chunks whose widest
        activation stays near ``ROLLOUT_CHUNK_BYTES``. GPUs take everything at once."""
        if device.type != "cpu":
            return b, s
        c = self.config
        widest = max(3 * c.pred_heads * c.pred_dim_head, c.pred_mlp_dim)  # per window position
        per_chunk = max(1, ROLLOUT_CHUNK_BYTES // (4 * c.history * widest))
        if per_chunk >= s:
            return per_chunk // s, s
        return 1, math.ceil(s / math.ceil(s / per_chunk))  # S in equal parts

    def _imagine(self, emb_hist: torch.Tensor, act_hist: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
        """:meth:`rollout` once the history fits the window (h <= history).

        Frames are numbered 0..h-1 (real) then h.. (predicted), and frame i is paired with action i:
        the executed blocks for i < h - 1, ``plans[:, :, i - h + 1]`` after. Step k feeds the window of
        frames lo..h+k-1 (at most ``history``) and keeps the newest output. The window's leading
        positions whose frame *and* action are real are the same for all S candidates, and under
        causal attention so are their keys and values: they are computed once per env (batch B) and
        broadcast, so the S candidates only pay for the positions their plan touches. Positional
        embeddings are per window position, so this sharing is redone at each step, never reused.
        """
        b, s, horizon, _ = plans.shape
        h, hist = emb_hist.shape[1], self.config.history
        # AdaLN modulations depend on the action alone: once per action, not once per window it is in.
        plan_mods = self.predictor.modulations(self.encode_actions(plans))  # per block [B, S, H, 6D]
        hist_mods = self.predictor.modulations(self.encode_actions(act_hist)) if h > 1 else None
        # The candidates' own frames: the newest real one (paired with the first planned block),
        # then each prediction as it is made.
        frames = emb_hist[:, None, -1:].expand(b, s, 1, -1)
        for step in range(horizon):
            lo = max(0, h + step - hist)
            n_shared = max(0, h - 1 - lo)
            past = None
            if n_shared:
                shared = slice(lo, h - 1)
                _, past = self.predictor(emb_hist[:, shared], mods=[m[:, shared] for m in hist_mods], return_kv=True)
                past = [(k.unsqueeze(1), v.unsqueeze(1)) for k, v in past]  # broadcast over the S candidates
            own = slice(lo + n_shared - (h - 1), step + 1)  # indices into frames and plan blocks
            out = self.predictor(frames[:, :, own], mods=[m[:, :, own] for m in plan_mods], past=past, last_only=True)
            frames = torch.cat([frames, self.pred_proj(out)], dim=2)
        return frames[:, :, 1:]


__all__ = ["LeWM", "LeWMConfig", "PRESETS", "preset_config", "config_to_dict", "config_from_dict"]
