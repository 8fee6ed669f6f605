"""A small pi0-style flow policy (Black et al. 2024, arXiv:2410.24164), written here, no weights
downloaded. It implements the FlowPolicy protocol (learning/networks/flow_policy.py):

    ctx = policy.prefix(obs)          (keys, values, mask), once per observation
    v = policy.velocity(x_t, t, ctx)  (B, H, A), every Euler step

Every layer holds two sets of weights that share one attention, as pi0's VLM and action expert:

    prefix tokens   [patches of each camera | one state token | prompt tokens]: attend to each
                    other (bidirectional; prompt padding masked out), never to the actions, so
                    every layer's prefix keys/values are computed once and are the ctx
    action tokens   one per action of the chunk: attend to the whole prefix and to each other

Time: our convention (flow_bc.py's) is t=0 noise, t=1 data, x_t = (1 - t) x0 + t x1, target
x1 - x0. pi0 writes tau=1 at noise and trains on tau = 0.999 b + 0.001, b ~ Beta(1.5, 1), which
weights the noisy end; here t = 1 - tau (t in [0, 0.999), mean 0.4). An action token is pi0's
action-time MLP: W3 swish(W2 [W1 a_i, sincos(t)]).

The backbone (`backbone_parameters()`, what `freeze_backbone` freezes, what `pretrained_path`
loads) is the prefix side: patchify, state and prompt embeddings, the prefix weights of every
layer. `pretrained_path` names a local safetensors file holding `policy.backbone.state_dict()`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from episode_dataset import IMAGE, LOW_DIM
from learning.errors import ConfigError
from learning.networks.embeddings import SinusoidalTimeEmbedding

Pi0Context = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class ByteTokenizer:
    """Toy tokenizer: UTF-8 bytes, id = byte + 1 (0 pads), so `vocab_size` = 257. Deterministic,
    no vocabulary file. `encode` -> ids (max_len,) long and mask (max_len,) bool (True = token)."""

    vocab_size = 257

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = text.encode()
        if len(data) > self.max_len:
            raise ConfigError(
                f"prompt {text!r} is {len(data)} bytes, longer than prompt_max_len {self.max_len}"
            )
        ids = torch.zeros(self.max_len, dtype=torch.long)
        ids[: len(data)] = torch.tensor(list(data), dtype=torch.long) + 1
        return ids, ids != 0


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) masked) v: q (B, h, Tq, d), k/v (B, h, Tk, d), mask (B, Tk) bool
    (True = may be attended) -> (B, Tq, h * d). Plain ops, so the ONNX graph is plain too."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    out = scores.softmax(dim=-1) @ v
    return out.transpose(1, 2).flatten(2)


class Block(nn.Module):
    """One side (prefix or expert) of a pre-norm transformer layer; the attention that joins the
    sides happens between `qkv` and `finish`."""

    def __init__(self, width: int, n_heads: int, head_dim: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.norm1 = nn.LayerNorm(width)
        self.qkv_proj = nn.Linear(width, 3 * n_heads * head_dim)
        self.out_proj = nn.Linear(n_heads * head_dim, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, width) -> q, k, v (B, n_heads, T, head_dim)."""
        q, k, v = self.qkv_proj(self.norm1(x)).unflatten(-1, (3, self.n_heads, -1)).unbind(2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        x = x + self.out_proj(attended)
        return x + self.mlp(self.norm2(x))


class Pi0Prefix(nn.Module):
    """The backbone: obs {key: (B, 1, *shape)} -> per-layer keys and values of the prefix
    tokens, each (B, num_layers, n_heads, P, head_dim), and their mask (B, P) bool."""

    def __init__(
        self,
        obs_specs: Mapping[str, Mapping[str, Any]],
        width: int,
        n_heads: int,
        head_dim: int,
        num_layers: int,
        patch_size: int,
        prompt: str | None,
        prompt_max_len: int,
    ) -> None:
        super().__init__()
        self.image_keys, self.low_dim_keys = [], []
        self.patchify = nn.ModuleDict()
        self.image_pos = nn.ParameterDict()
        low_dim = 0
        for key in sorted(obs_specs):
            shape, kind = tuple(obs_specs[key]["shape"]), obs_specs[key].get("feature_type")
            if kind == IMAGE and len(shape) == 3:
                height, w, channels = shape
                if height < patch_size or w < patch_size:
                    raise ConfigError(
                        f"pi0: image {key!r} {height}x{w} is smaller than patch_size {patch_size}"
                    )
                self.image_keys.append(key)
                self.patchify[key] = nn.Conv2d(channels, width, patch_size, stride=patch_size)
                patches = (height // patch_size) * (w // patch_size)
                self.image_pos[key] = nn.Parameter(0.02 * torch.randn(1, patches, width))
            elif kind == LOW_DIM and len(shape) == 1:
                self.low_dim_keys.append(key)
                low_dim += shape[0]
            else:
                raise ConfigError(
                    f"pi0: observation {key!r}: feature_type {kind!r} with shape {shape} is "
                    "neither an image (H, W, C) nor low_dim (D,)"
                )
        self.state_in = nn.Linear(low_dim, width) if self.low_dim_keys else None
        n_tokens = sum(p.shape[1] for p in self.image_pos.values()) + bool(self.low_dim_keys)
        mask = torch.ones(n_tokens, dtype=torch.bool)
        self.prompt_embed = None
        if prompt:
            tokenizer = ByteTokenizer(prompt_max_len)
            ids, prompt_mask = tokenizer.encode(prompt)
            self.register_buffer("prompt_ids", ids, persistent=False)  # from the config
            self.prompt_embed = nn.Embedding(tokenizer.vocab_size, width)
            self.prompt_pos = nn.Parameter(0.02 * torch.randn(1, prompt_max_len, width))
            mask = torch.cat([mask, prompt_mask])
        if not len(mask):
            raise ConfigError("pi0: no observation keys and no prompt: the prefix is empty")
        self.register_buffer("token_mask", mask, persistent=False)
        self.layers = nn.ModuleList(Block(width, n_heads, head_dim) for _ in range(num_layers))

    def tokens(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, P, width): patches of each camera (sorted keys), the state token, the prompt."""
        parts = []
        for key in self.image_keys:
            frames = obs[key][:, 0].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
            patches = self.patchify[key](frames).flatten(2).transpose(1, 2)
            parts.append(patches + self.image_pos[key])
        if self.state_in is not None:
            state = torch.cat([obs[k][:, 0] for k in self.low_dim_keys], dim=-1)
            parts.append(self.state_in(state)[:, None])
        if self.prompt_embed is not None:
            batch = next(iter(obs.values())).shape[0] if obs else 1
            prompt = self.prompt_embed(self.prompt_ids)[None] + self.prompt_pos
            parts.append(prompt.expand(batch, -1, -1))
        return torch.cat(parts, dim=1)

    def forward(self, obs: Mapping[str, torch.Tensor]) -> Pi0Context:
        x = self.tokens(obs)
        mask = self.token_mask.expand(x.shape[0], -1)
        keys, values = [], []
        for layer in self.layers:
            q, k, v = layer.qkv(x)
            x = layer.finish(x, attend(q, k, v, mask))  # prefix attends to the prefix only
            keys.append(k)
            values.append(v)
        return torch.stack(keys, dim=1), torch.stack(values, dim=1), mask


class ActionExpert(nn.Module):
    """(x_t (B, H, A), t (B,), prefix keys/values/mask) -> velocity (B, H, A)."""

    def __init__(
        self,
        width: int,
        n_heads: int,
        head_dim: int,
        num_layers: int,
        horizon: int,
        action_dim: int,
    ) -> None:
        super().__init__()
        self.action_in = nn.Linear(action_dim, width)
        self.time_embed = SinusoidalTimeEmbedding(width)
        # pi0's action-time MLP: concat(action token, time embedding) -> Linear, swish, Linear
        self.action_time_mlp = nn.Sequential(
            nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.action_pos = nn.Parameter(0.02 * torch.randn(1, horizon, width))
        self.layers = nn.ModuleList(Block(width, n_heads, head_dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, action_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, ctx: Pi0Context) -> torch.Tensor:
        prefix_keys, prefix_values, prefix_mask = ctx
        tokens = self.action_in(x_t)
        time = self.time_embed(t)[:, None].expand(-1, tokens.shape[1], -1)
        x = self.action_time_mlp(torch.cat([tokens, time], dim=-1)) + self.action_pos
        # action tokens see every valid prefix token and every action token
        mask = torch.cat([prefix_mask, prefix_mask.new_ones(x.shape[0], x.shape[1])], dim=1)
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(x)
            k = torch.cat([prefix_keys[:, i], k], dim=2)
            v = torch.cat([prefix_values[:, i], v], dim=2)
            x = layer.finish(x, attend(q, k, v, mask))
        return self.out(self.norm(x))


class Pi0Policy(nn.Module):
    """pi0-style FlowPolicy; see the module docstring.

    `emb_dim` is the prefix width, `expert_dim` the action expert's (pi0's expert is narrower;
    None: emb_dim); both sides share `n_heads` heads of emb_dim // n_heads. `patch_size`: the
    side of a square image patch (one token each). `prompt`: a fixed instruction, tokenized by
    `ByteTokenizer` into `prompt_max_len` tokens (None: no language tokens).
    """

    def __init__(
        self,
        obs_specs: Mapping[str, Mapping[str, Any]],
        action_dim: int,
        horizon: int,
        obs_steps: int = 1,
        emb_dim: int = 64,
        expert_dim: int | None = None,
        n_heads: int = 4,
        num_layers: int = 2,
        patch_size: int = 8,
        prompt: str | None = None,
        prompt_max_len: int = 32,
        pretrained_path: str | None = None,
    ) -> None:
        super().__init__()
        if obs_steps != 1:
            raise ConfigError(f"pi0: obs_steps {obs_steps} (one observation per chunk: use 1)")
        if emb_dim % n_heads:
            raise ConfigError(f"pi0: emb_dim {emb_dim} is not a multiple of n_heads {n_heads}")
        self.horizon, self.action_dim = horizon, action_dim
        head_dim = emb_dim // n_heads
        self.backbone = Pi0Prefix(
            obs_specs, emb_dim, n_heads, head_dim, num_layers, patch_size, prompt, prompt_max_len
        )
        self.expert = ActionExpert(
            expert_dim or emb_dim, n_heads, head_dim, num_layers, horizon, action_dim
        )
        if pretrained_path is not None:
            self.load_backbone(pretrained_path)

    def prefix(self, obs: Mapping[str, torch.Tensor]) -> Pi0Context:
        return self.backbone(obs)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, ctx: Pi0Context) -> torch.Tensor:
        return self.expert(x_t, t, ctx)

    def sample_time(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        u = torch.rand(batch, generator=generator, device=device)
        b = u ** (1 / 1.5)  # Beta(1.5, 1) by its inverse CDF (F(b) = b^1.5)
        return 1 - (0.999 * b + 0.001)  # t = 1 - tau, tau pi0's time (1 = noise)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()

    def load_backbone(self, path: str | Path) -> None:
        """Load `backbone.state_dict()` from a local safetensors file (data only, never
        downloaded); one-line ConfigError if absent, unreadable or not this backbone's."""
        path = Path(path)
        where = f"pi0 pretrained_path {path}"
        if not path.is_file():
            raise ConfigError(f"{where}: file not found (weights are never downloaded)")
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError) as e:
            raise ConfigError(
                f"{where}: not a safetensors file ({str(e).splitlines()[0]})"
            ) from None
        own = self.backbone.state_dict()
        missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        if missing or extra:
            raise ConfigError(
                f"{where}: keys do not match this backbone ({len(missing)} missing, e.g. "
                f"{missing[:2]}; {len(extra)} unexpected, e.g. {extra[:2]})"
            )
        for name, value in own.items():
            if tensors[name].shape != value.shape:
                raise ConfigError(
                    f"{where}: {name} has shape {tuple(tensors[name].shape)}, this backbone "
                    f"{tuple(value.shape)}"
                )
        self.backbone.load_state_dict(tensors)
