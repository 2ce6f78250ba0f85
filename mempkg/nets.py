"""Small score networks that train on a CPU: an MLP for flattened data and a small U-Net.

Both map ``(x, t)`` with ``x`` of shape ``(batch, *data_shape)`` and ``t`` a float or a
``(batch,)`` tensor in (0, 1] to a tensor shaped like ``x``: the predicted noise ``eps`` or the
predicted clean image ``x0``, depending on how :class:`mempkg.score.NetworkScore` reads it.

* :class:`MLPScoreNet` -- a residual MLP with a sinusoidal time embedding. At 8x8 digits
  (d = 64) a width-256, 3-block net trains at a few hundred steps per second on 2 cores and is
  the model of chapters 4-5 (a conv net is not needed at that size and is ~10x slower).
* :class:`ResNetClassifier` -- a small ResNet image classifier, time-independent (the "normal"
  classifier of seed 002) or time-dependent with a time module right after the first batch
  normalisation of every residual block (seed 002, App. C, Fig. 6), for SIDE.
* :class:`UNet` -- a U-Net with GroupNorm, time-conditioned residual blocks and self-attention,
  for 8x8 and 32x32 images. No chapter trains it at its defaults (at 8x8 the MLP is as good and
  ~10x faster on a CPU); :data:`CIFAR10_UNET` is the network of the CIFAR-10 recipes that the
  chapters load when run with ``dataset="cifar10"`` (trained on a GPU). The tests train it briefly.

References: Ho et al. (2020) for the architecture family; Song et al. (2021).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import check_positive_int

__all__ = ["MLPScoreNet", "UNet", "ResNetClassifier", "time_embedding", "build_net", "CIFAR10_UNET", "NETS"]


def time_embedding(t, dim: int, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Sinusoidal embedding of ``1000 t`` (Transformer / DDPM style), shape ``(batch, dim)``."""
    t = torch.as_tensor(t, dtype=dtype, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=dtype, device=device) / max(half - 1, 1))
    args = 1000.0 * t[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class MLPScoreNet(nn.Module):
    """Residual MLP on flattened inputs, conditioned on time (and optionally a class) by embeddings.

    Parameters
    ----------
    data_shape : tuple, e.g. ``(1, 8, 8)``
    hidden : int, width of the hidden layers
    n_blocks : int, number of residual blocks ``h <- h + W2 SiLU(W1 SiLU(h) + e(t, y))``
    time_dim : int, size of the sinusoidal embedding
    n_classes : int, optional
        Make the network class-conditional: ``forward(x, t, y)`` with ``y`` in ``0..n_classes-1``, or
        ``y = None`` / ``y = n_classes`` for the unconditional ("null") input that classifier-free
        guidance needs (Ho & Salimans 2022). The class embedding is added to the time embedding.
    """

    def __init__(self, data_shape, hidden: int = 256, n_blocks: int = 3, time_dim: int = 64, n_classes: int | None = None):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.config = dict(kind="mlp", data_shape=list(self.data_shape), hidden=hidden, n_blocks=n_blocks, time_dim=time_dim)
        self.n_classes = n_classes
        if n_classes is not None:
            self.config["n_classes"] = check_positive_int(n_classes, "n_classes")
            self.class_embed = nn.Embedding(n_classes + 1, hidden)
        d = math.prod(self.data_shape)
        self.time_dim = check_positive_int(time_dim, "time_dim")
        if time_dim % 2:
            raise ValueError(f"time_dim must be even (sine and cosine halves), got {time_dim}")
        hidden = check_positive_int(hidden, "hidden")
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(d, hidden)
        self.blocks = nn.ModuleList(nn.ModuleList([nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)])
                                    for _ in range(check_positive_int(n_blocks, "n_blocks")))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        b = x.shape[0]
        # One time for the whole batch (ODE steps, volume growth): embed it once and broadcast.
        shared = not isinstance(t, torch.Tensor) or t.ndim == 0
        temb = self.time_mlp(time_embedding(t, self.time_dim, 1 if shared else b, x.device, x.dtype))
        if self.n_classes is not None:
            if y is None:
                y = self.n_classes
            y = torch.as_tensor(y, dtype=torch.long, device=x.device)
            temb = temb + self.class_embed(y.expand(b) if y.ndim == 0 else y)
        elif y is not None:
            raise ValueError("y (a class label) was given to an unconditional network (n_classes=None)")
        h = self.inp(x.reshape(b, -1))
        for lin1, lin_t, lin2 in self.blocks:
            h = h + lin2(torch.nn.functional.silu(lin1(torch.nn.functional.silu(h)) + lin_t(temb)))
        return self.out(h).reshape(x.shape)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, temb: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(temb, c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(torch.nn.functional.silu(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(self.dropout(torch.nn.functional.silu(self.norm2(h))))
        return h + self.skip(x)


class _Attention(nn.Module):
    """Single-head self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x, temb=None):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    """A U-Net with GroupNorm, time-conditioned residual blocks and optional self-attention.

    The architecture family of Ho et al. (2020), which Song et al. (2021) train on CIFAR-10 as
    their DDPM baseline: at every level ``n_res_blocks`` residual blocks, a strided convolution down,
    and on the way up ``n_res_blocks + 1`` blocks that each take one skip connection. The defaults
    (two levels, one block each, no attention) are a small net for 8x8 digits and the tests;
    :data:`CIFAR10_UNET` is the 32x32 configuration of the seeds (about 36 M parameters).

    Parameters
    ----------
    data_shape : ``(channels, height, width)``, sides divisible by ``2 ** (len(channel_mult) - 1)``
    base : int, channels at full resolution
    time_dim : int, size of the sinusoidal embedding
    groups : int, GroupNorm groups
    channel_mult : sequence of int, channels of each level as multiples of ``base``
    n_res_blocks : int, residual blocks per level on the way down
    attention : sequence of int, the resolutions (sides in pixels) at which self-attention follows
        each residual block (``[16]`` in DDPM's CIFAR-10 net)
    dropout : float in [0, 1), inside every residual block
    n_classes : int, optional; as in :class:`MLPScoreNet` (``forward(x, t, y)``, null class ``n_classes``)
    """

    def __init__(self, data_shape, base: int = 32, time_dim: int = 64, groups: int = 8, channel_mult=(1, 2),
                 n_res_blocks: int = 1, attention=(), dropout: float = 0.0, n_classes: int | None = None):
        super().__init__()
        channel_mult = [check_positive_int(m, "channel_mult") for m in channel_mult]
        if not channel_mult:
            raise ValueError("channel_mult must name at least one level, got []")
        factor = 2 ** (len(channel_mult) - 1)
        if len(data_shape) != 3 or data_shape[1] % factor or data_shape[2] % factor:
            raise ValueError(f"data_shape must be (channels, height, width) with sides divisible by {factor} "
                             f"(2 ** (levels - 1)), got {tuple(data_shape)}")
        base = check_positive_int(base, "base")
        groups = check_positive_int(groups, "groups")
        for m in channel_mult:
            if (base * m) % min(groups, base * m):
                raise ValueError(f"base must be divisible by groups = {groups} at every level (GroupNorm): "
                                 f"base * channel_mult = {base * m}")
        if check_positive_int(time_dim, "time_dim") % 2:
            raise ValueError(f"time_dim must be even (sine and cosine halves), got {time_dim}")
        n_res_blocks = check_positive_int(n_res_blocks, "n_res_blocks")
        attention = [int(r) for r in attention]
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.data_shape = tuple(data_shape)
        self.config = dict(kind="unet", data_shape=list(self.data_shape), base=base, time_dim=time_dim, groups=groups,
                           channel_mult=channel_mult, n_res_blocks=n_res_blocks, attention=attention,
                           dropout=float(dropout))
        self.n_classes = n_classes
        temb = 4 * base
        if n_classes is not None:
            self.config["n_classes"] = check_positive_int(n_classes, "n_classes")
            self.class_embed = nn.Embedding(n_classes + 1, temb)
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(data_shape[0], base, 3, padding=1)

        def block(c_in, c_out, side):
            layers = [_ResBlock(c_in, c_out, temb, groups, dropout)]
            if side in attention:
                layers.append(_Attention(c_out, groups))
            return nn.ModuleList(layers)

        side, ch = data_shape[1], base
        skips = [ch]
        self.down = nn.ModuleList()
        for level, m in enumerate(channel_mult):
            for _ in range(n_res_blocks):
                self.down.append(block(ch, base * m, side))
                ch = base * m
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                side //= 2
                skips.append(ch)
        self.mid = nn.ModuleList([_ResBlock(ch, ch, temb, groups, dropout), _Attention(ch, groups),
                                  _ResBlock(ch, ch, temb, groups, dropout)])
        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(channel_mult))):
            for _ in range(n_res_blocks + 1):
                self.up.append(block(ch + skips.pop(), base * m, side))
                ch = base * m
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(ch, ch, 3, padding=1)]))
                side *= 2
        self.conv_out = nn.Sequential(nn.GroupNorm(min(groups, ch), ch), nn.SiLU(), nn.Conv2d(ch, data_shape[0], 3, padding=1))

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        temb = self.time_mlp(time_embedding(t, self.time_dim, x.shape[0], x.device, x.dtype))
        if self.n_classes is not None:
            y = torch.as_tensor(self.n_classes if y is None else y, dtype=torch.long, device=x.device)
            temb = temb + self.class_embed(y.expand(x.shape[0]) if y.ndim == 0 else y)
        elif y is not None:
            raise ValueError("y (a class label) was given to an unconditional network (n_classes=None)")
        h = self.conv_in(x)
        hs = [h]
        for layers in self.down:
            h = _apply(layers, h, temb)
            hs.append(h)
        h = _apply(self.mid, h, temb)
        for layers in self.up:
            if isinstance(layers[0], _ResBlock):
                h = torch.cat([h, hs.pop()], 1)
            h = _apply(layers, h, temb)
        return self.conv_out(h)


def _apply(layers, h, temb):
    for layer in layers:
        h = layer(h, temb) if isinstance(layer, (_ResBlock, _Attention)) else layer(h)
    return h


#: The 32x32 U-Net of the seeds' CIFAR-10 models: DDPM's configuration (Ho et al. 2020, App. B),
#: which seed 000 trains through Song et al. (2021)'s code: 128 channels, levels at 32, 16, 8, 4
#: pixels with multipliers 1, 2, 2, 2, two residual blocks per level, attention at 16x16, dropout 0.1.
CIFAR10_UNET = dict(kind="unet", data_shape=[3, 32, 32], base=128, time_dim=128, groups=32, channel_mult=[1, 2, 2, 2],
                    n_res_blocks=2, attention=[16], dropout=0.1)


class _ClassifierBlock(nn.Module):
    """conv - BN - [+ time module] - ReLU - conv - BN, plus the skip connection (seed 002, Fig. 6)."""

    def __init__(self, channels: int, temb: int | None):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.time = None if temb is None else nn.Sequential(nn.Linear(temb, channels), nn.SiLU(),
                                                            nn.Linear(channels, channels))
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x, temb=None):
        h = self.bn1(self.conv1(x))
        if self.time is not None:
            h = h + self.time(temb)[:, :, None, None]          # the time module, right after the first BN
        h = self.bn2(self.conv2(torch.relu(h)))
        return torch.relu(h + x)


class ResNetClassifier(nn.Module):
    """A small ResNet classifier of images, optionally conditioned on the diffusion time.

    ``forward(x, t=None)`` returns logits ``(batch, n_classes)``. With ``time_dependent=True`` each
    residual block adds an embedding of ``t`` right after its first batch normalisation: seed 002
    (App. C, Fig. 6) inserts "a time module" after ``x_BN`` in "a conventional ResNet block"; the
    text also says "at a singular point within the network". We read it as *every* block (the
    figure) and document the choice; the module is additive (Linear-SiLU-Linear of the sinusoidal
    embedding of ``t``), which the paper does not specify. A time-independent classifier ignores ``t``.

    Parameters
    ----------
    data_shape : ``(channels, height, width)``, e.g. ``(1, 8, 8)`` or ``(3, 32, 32)``
    n_classes : int
    width : int, channels of the residual blocks
    n_blocks : int
    time_dependent : bool
    time_dim : int, size of the sinusoidal time embedding
    """

    def __init__(self, data_shape, n_classes: int, width: int = 32, n_blocks: int = 2, time_dependent: bool = False,
                 time_dim: int = 32):
        super().__init__()
        if len(data_shape) != 3:
            raise ValueError(f"data_shape must be (channels, height, width), got {tuple(data_shape)}")
        n_classes = check_positive_int(n_classes, "n_classes")
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        width = check_positive_int(width, "width")
        if check_positive_int(time_dim, "time_dim") % 2:
            raise ValueError(f"time_dim must be even (sine and cosine halves), got {time_dim}")
        self.data_shape, self.n_classes, self.time_dependent = tuple(data_shape), n_classes, bool(time_dependent)
        self.time_dim = time_dim
        self.config = dict(kind="resnet_classifier", data_shape=list(self.data_shape), n_classes=n_classes,
                           width=width, n_blocks=n_blocks, time_dependent=self.time_dependent, time_dim=time_dim)
        temb = 2 * width if time_dependent else None
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, temb), nn.SiLU()) if time_dependent else None
        self.stem = nn.Sequential(nn.Conv2d(data_shape[0], width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.blocks = nn.ModuleList(_ClassifierBlock(width, temb) for _ in range(check_positive_int(n_blocks, "n_blocks")))
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor, t=None) -> torch.Tensor:
        temb = None
        if self.time_dependent:
            if t is None:
                raise ValueError("t must be given to a time-dependent classifier")
            temb = self.time_mlp(time_embedding(t, self.time_dim, x.shape[0], x.device, x.dtype))
            if temb.shape[0] == 1 and x.shape[0] != 1:
                temb = temb.expand(x.shape[0], -1)
        h = self.stem(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.head(h.mean((2, 3)))


def build_net(config: dict) -> nn.Module:
    """Rebuild a network from its ``config`` dict (as stored in checkpoints)."""
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in NETS:
        raise ValueError(f"config['kind'] must be one of {', '.join(map(repr, NETS))}, got {kind!r}")
    return NETS[kind](**config)


#: The network classes by the ``kind`` their configuration names.
NETS = {"mlp": MLPScoreNet, "unet": UNet, "resnet_classifier": ResNetClassifier}
