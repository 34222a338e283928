# This file is part of trail_detect.
#
# Developed for the LSST Data Management System.
# This product includes software developed by the LSST Project
# (https://www.lsst.org).
# See the COPYRIGHT file at the top-level directory of this distribution
# for details of code ownership.
#
# This program is free software: you can redistribute it and/or modify
# it under the terms of the GNU General Public License as published by
# the Free Software Foundation, either version 3 of the License, or
# (at your option) any later version.
#
# This program is distributed in the hope that it will be useful,
# but WITHOUT ANY WARRANTY; without even the implied warranty of
# MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
# GNU General Public License for more details.
#
# You should have received a copy of the GNU General Public License
# along with this program.  If not, see <https://www.gnu.org/licenses/>.

"""Convolutional networks for trail segmentation and star detection.

Three networks, all written in plain PyTorch (no pretrained weights are
ever downloaded):

`ResAttentionUNet`
    Trail segmentation: a U-Net of residual blocks with squeeze-excitation
    and additive attention gates on the skip connections (Oktay et al.
    2018, "Attention U-Net"). Returns per-pixel logits ``(N, C, H, W)``.
`StarCenterNet`
    Star detection with the *same encoder class* (so that an encoder
    pretrained on star fields can be moved into the trail network with
    `transfer_encoder`), a U-Net decoder and two CenterNet heads (Zhou,
    Wang & Kraehenbuehl 2019, "Objects as Points"): a heatmap of logits
    and the sub-pixel offsets ``(dx, dy)``.
`HybridStarDetector`
    A ResNet-34-style encoder (basic blocks ``[3, 4, 6, 3]``, reduced
    widths) with an FPN-style decoder back to full resolution, the same
    CenterNet heads, and a small transformer over the top-k candidate
    peaks of its *own predicted* heatmap that refines their scores and
    offsets. No truth ever enters the forward pass;
    `loss_targets_for_candidates` turns truth positions into targets for
    the candidate outputs, for the training loop.

Every network takes ``(N, C, H, W)`` images of any ``H`` and ``W``: the
input is padded (reflect by default) to a multiple of the total stride and
the outputs are cropped back, so outputs are aligned pixel for pixel with
the input.

Conventions (those of `lsst.trail_detect.tiles.datasets`): arrays are
indexed ``[..., y, x]``; pixel centres are at integer coordinates; an
offset ``(dx, dy)`` stored at a peak pixel ``(x_peak, y_peak)`` puts the
source at ``(x_peak + dx, y_peak + dy)``. Candidate coordinates are
``(x, y)`` pairs.

A network is described by a JSON-serializable dict ``{"name": ..., **kwargs}``
(`architecture_of`, stored as ``model.architecture``) that `build_model`
turns back into an identical (untrained) module; the model storage keeps
that dict next to the weights. `default_architecture` gives the compact
(CPU inference) and large (GPU) variants.

This module imports only ``numpy`` and ``torch``; it never imports the Butler.
"""

from __future__ import annotations

__all__ = (
    "HEATMAP_PRIOR",
    "NETWORKS",
    "AttentionGate",
    "FPNDecoder",
    "HybridStarDetector",
    "LineFilterBank",
    "ResAttentionUNet",
    "ResEncoder",
    "ResNetEncoder",
    "ResidualBlock",
    "SqueezeExcitation",
    "StarCenterNet",
    "UNetDecoder",
    "architecture_of",
    "build_model",
    "count_parameters",
    "default_architecture",
    "encoder_kwargs",
    "heatmap_peaks",
    "input_conv_key",
    "line_filter_kernels",
    "load_widened_state",
    "loss_targets_for_candidates",
    "model_size_bytes",
    "prepare_for_inference",
    "set_encoder_trainable",
    "transfer_encoder",
)

import copy
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

HEATMAP_PRIOR = 0.1
"""Prior star probability used to initialize the heatmap head bias
(``log(p / (1 - p)) = -2.197``, as in CenterNet)."""

_NORMS = ("batch", "group", "none")
_ACTIVATIONS = ("silu", "relu")
_PAD_MODES = ("reflect", "replicate", "zeros")
_ATTENTION_PARTS = ("gate", "se")


# ---------------------------------------------------------------------------
# Small building blocks.
# ---------------------------------------------------------------------------


def _check_choice(label: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"{label} must be one of {list(choices)}, not {value!r}.")
    return value.lower()


def _check_int(label: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{label} must be an integer, not {value!r}.")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{label} must be {bound}, not {value}.")
    return value


def _check_dropout(value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"dropout must be a number in [0, 1), not {value!r}.") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must be in [0, 1), not {value}.")
    return value


def _parse_attention(attention: Any) -> tuple[str, frozenset[str]]:
    """Parse an attention specification such as ``"gate+se"``.

    Returns the canonical string (``"gate+se"``, ``"gate"``, ``"se"`` or
    ``"none"``) and the set of parts.
    """
    if attention is None:
        attention = "none"
    if not isinstance(attention, str):
        raise ValueError(
            f"attention must be a string like 'gate+se', 'gate', 'se' or 'none', not {attention!r}."
        )
    parts = {p.strip().lower() for p in attention.replace(",", "+").split("+") if p.strip()}
    parts.discard("none")
    unknown = parts - set(_ATTENTION_PARTS)
    if unknown:
        raise ValueError(
            f"unknown attention part(s) {sorted(unknown)} in {attention!r}; use 'gate', 'se', "
            "'gate+se' or 'none'."
        )
    canonical = "+".join(p for p in _ATTENTION_PARTS if p in parts) or "none"
    return canonical, frozenset(parts)


def _group_count(channels: int) -> int:
    groups = min(8, channels)
    while channels % groups:
        groups -= 1
    return groups


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(_group_count(channels), channels)
    return nn.Identity()


def _activation(kind: str) -> nn.Module:
    return nn.SiLU(inplace=True) if kind == "silu" else nn.ReLU(inplace=True)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)


def _pad_to_multiple(x: torch.Tensor, multiple: int, mode: str) -> torch.Tensor:
    """Pad the last two axes of ``x`` at their high ends to a multiple of
    ``multiple``; ``reflect`` falls back to ``replicate`` where the image
    is too small to reflect.
    """
    height, width = x.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    if mode == "zeros":
        return F.pad(x, (0, pad_w, 0, pad_h))
    if mode == "reflect" and (pad_h >= height or pad_w >= width):
        mode = "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SqueezeExcitation(nn.Module):
    """Channel attention (Hu, Shen & Sun 2018): global average pool, a
    bottleneck of two 1x1 convolutions and a sigmoid that rescales the
    channels.

    Parameters
    ----------
    channels : `int`
        Channels in and out.
    reduction : `int`, optional
        Bottleneck reduction factor (at least 4 hidden channels).
    """

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.adaptive_avg_pool2d(x, 1)
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(w), inplace=True)))
        return x * w


class ResidualBlock(nn.Module):
    """Residual block: two 3x3 convolutions with normalization, an
    optional squeeze-excitation and a skip connection (a strided 1x1
    convolution where the shape changes).

    Parameters
    ----------
    in_channels, out_channels : `int`
        Channels in and out.
    stride : `int`, optional
        Stride of the first convolution (2 to downsample).
    norm : `str`, optional
        ``"batch"``, ``"group"`` or ``"none"``.
    activation : `str`, optional
        ``"silu"`` or ``"relu"``.
    se : `bool`, optional
        Whether to apply squeeze-excitation to the residual branch.
    dropout : `float`, optional
        Channel dropout (`torch.nn.Dropout2d`) between the convolutions.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        norm: str = "batch",
        activation: str = "silu",
        se: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.norm1 = _norm(norm, out_channels)
        self.act1 = _activation(activation)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.norm2 = _norm(norm, out_channels)
        self.se = SqueezeExcitation(out_channels) if se else nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), _norm(norm, out_channels)
            )
        else:
            self.shortcut = nn.Identity()
        self.act2 = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dropout(self.act1(self.norm1(self.conv1(x))))
        y = self.se(self.norm2(self.conv2(y)))
        return self.act2(y + self.shortcut(x))


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection (Oktay et al. 2018).

    The skip features ``x`` (fine) are brought to the resolution of the
    gating signal ``g`` (the coarser decoder features) by a 2x2 stride-2
    convolution, added to a 1x1 projection of ``g``, passed through ReLU,
    a 1x1 convolution to one channel and a sigmoid; the resulting
    attention coefficients are upsampled bilinearly and multiply ``x``.

    Parameters
    ----------
    skip_channels : `int`
        Channels of the skip features.
    gate_channels : `int`
        Channels of the gating signal (half the skip resolution).
    inter_channels : `int`
        Channels of the intermediate space.
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int):
        super().__init__()
        self.theta = nn.Conv2d(skip_channels, inter_channels, 2, stride=2, bias=False)
        self.phi = nn.Conv2d(gate_channels, inter_channels, 1)
        self.psi = nn.Conv2d(inter_channels, 1, 1)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.theta(x) + self.phi(g), inplace=True)
        alpha = torch.sigmoid(self.psi(a))
        alpha = F.interpolate(alpha, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * alpha


# ---------------------------------------------------------------------------
# Encoders and decoders.
# ---------------------------------------------------------------------------


def _stage_channels(base_channels: int, depth: int, max_channels: int) -> list[int]:
    return [min(base_channels * 2**i, max_channels) for i in range(depth + 1)]


def _residual_stage(c_in: int, c_out: int, n_blocks: int, block: dict) -> nn.Sequential:
    """A downsampling residual block (stride 2) followed by ``n_blocks - 1`` more at the new width."""
    blocks = [ResidualBlock(c_in, c_out, stride=2, **block)]
    blocks += [ResidualBlock(c_out, c_out, **block) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


class _StagedEncoder(nn.Module):
    """An encoder made of ``self.stages``, returning every stage's features."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the features of every stage, shallowest first."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class ResEncoder(_StagedEncoder):
    """Residual encoder shared by `ResAttentionUNet` and `StarCenterNet`.

    Stage 0 is the stem (a 3x3 convolution) and ``blocks_per_stage``
    residual blocks at full resolution with ``base_channels`` channels;
    stage ``i`` (1 to ``depth``) halves the resolution with a strided
    residual block and doubles the channels (up to ``max_channels``).

    Parameters
    ----------
    in_channels : `int`
        Input image channels.
    base_channels : `int`
        Channels at full resolution.
    depth : `int`
        Number of downsamplings (total stride ``2**depth``).
    blocks_per_stage : `int`
        Residual blocks in every stage.
    se : `bool`
        Squeeze-excitation in the blocks.
    norm, activation : `str`
        See `ResidualBlock`.
    max_channels : `int`
        Cap on the channels of the deeper stages.
    dropout : `float`
        Channel dropout inside the blocks.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int,
        depth: int,
        blocks_per_stage: int,
        se: bool,
        norm: str,
        activation: str,
        max_channels: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.channels = _stage_channels(base_channels, depth, max_channels)
        block = {"norm": norm, "activation": activation, "se": se, "dropout": dropout}
        c0 = self.channels[0]
        stem = [
            nn.Sequential(_conv3x3(in_channels, c0), _norm(norm, c0), _activation(activation)),
            *[ResidualBlock(c0, c0, **block) for _ in range(blocks_per_stage)],
        ]
        stages = [nn.Sequential(*stem)]
        for i in range(1, depth + 1):
            stages.append(_residual_stage(self.channels[i - 1], self.channels[i], blocks_per_stage, block))
        self.stages = nn.ModuleList(stages)


class UNetDecoder(nn.Module):
    """U-Net decoder: at every level, a 1x1 projection of the coarser
    features upsampled bilinearly, the (optionally gated) skip features
    concatenated to it, and residual blocks.

    Parameters
    ----------
    channels : `list` [`int`]
        Channels of the encoder stages, shallowest first.
    gate : `bool`
        Attention gates on the skip connections.
    blocks_per_stage : `int`
        Residual blocks per level.
    se : `bool`
        Squeeze-excitation in the blocks.
    norm, activation : `str`
        See `ResidualBlock`.
    dropout : `float`
        Channel dropout inside the blocks.
    """

    def __init__(
        self,
        channels: Sequence[int],
        gate: bool,
        blocks_per_stage: int,
        se: bool,
        norm: str,
        activation: str,
        dropout: float = 0.0,
    ):
        super().__init__()
        block = {"norm": norm, "activation": activation, "se": se, "dropout": dropout}
        self.up = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.out_channels = channels[0]
        for i in range(len(channels) - 1, 0, -1):
            fine, coarse = channels[i - 1], channels[i]
            self.up.append(
                nn.Sequential(
                    nn.Conv2d(coarse, fine, 1, bias=False), _norm(norm, fine), _activation(activation)
                )
            )
            self.gates.append(AttentionGate(fine, coarse, max(fine // 2, 4)) if gate else nn.Identity())
            blocks = [ResidualBlock(2 * fine, fine, **block)]
            blocks += [ResidualBlock(fine, fine, **block) for _ in range(blocks_per_stage - 1)]
            self.blocks.append(nn.Sequential(*blocks))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decode encoder features (shallowest first) to full resolution."""
        x = features[-1]
        for level, (up, gate, blocks) in enumerate(zip(self.up, self.gates, self.blocks, strict=True)):
            skip = features[-2 - level]
            y = F.interpolate(up(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
            if isinstance(gate, AttentionGate):
                skip = gate(skip, x)
            x = blocks(torch.cat([skip, y], dim=1))
        return x


class ResNetEncoder(_StagedEncoder):
    """ResNet-34-style encoder of basic residual blocks.

    The stem (3x3 convolution, ``base_channels // 2`` channels) keeps full
    resolution; layers 1 to 4 (``blocks`` basic blocks each, ``[3, 4, 6, 3]``
    as in ResNet-34) each halve it, with ``base_channels * [1, 2, 4, 8]``
    channels: the total stride is 16 rather than ResNet-34's 32 and there
    is no max-pool, so that faint, barely resolved stars survive to the
    decoder.

    Parameters
    ----------
    in_channels : `int`
        Input image channels.
    base_channels : `int`
        Channels of layer 1.
    blocks : `list` [`int`]
        Basic blocks per layer.
    norm, activation : `str`
        See `ResidualBlock`.
    dropout : `float`
        Channel dropout inside the blocks.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int,
        blocks: Sequence[int],
        norm: str,
        activation: str,
        dropout: float = 0.0,
    ):
        super().__init__()
        stem_channels = max(base_channels // 2, 4)
        self.channels = [stem_channels] + [base_channels * 2**i for i in range(len(blocks))]
        block = {"norm": norm, "activation": activation, "se": False, "dropout": dropout}
        stages = [
            nn.Sequential(
                _conv3x3(in_channels, stem_channels), _norm(norm, stem_channels), _activation(activation)
            )
        ]
        for i, n_blocks in enumerate(blocks):
            stages.append(_residual_stage(self.channels[i], self.channels[i + 1], n_blocks, block))
        self.stages = nn.ModuleList(stages)


class FPNDecoder(nn.Module):
    """Feature-pyramid decoder to full resolution: at every level the
    coarser features are upsampled bilinearly, added to a 1x1 lateral
    projection of the skip features and smoothed by a 3x3 convolution.

    Parameters
    ----------
    channels : `list` [`int`]
        Channels of the encoder stages, shallowest first.
    out_channels : `int`
        Channels of every decoder level.
    norm, activation : `str`
        See `ResidualBlock`.
    """

    def __init__(self, channels: Sequence[int], out_channels: int, norm: str, activation: str):
        super().__init__()
        self.top = nn.Conv2d(channels[-1], out_channels, 1)
        self.lateral = nn.ModuleList()
        self.smooth = nn.ModuleList()
        for i in range(len(channels) - 2, -1, -1):
            self.lateral.append(nn.Conv2d(channels[i], out_channels, 1))
            self.smooth.append(
                nn.Sequential(
                    _conv3x3(out_channels, out_channels), _norm(norm, out_channels), _activation(activation)
                )
            )
        self.out_channels = out_channels

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decode encoder features (shallowest first) to full resolution."""
        x = self.top(features[-1])
        for level, (lateral, smooth) in enumerate(zip(self.lateral, self.smooth, strict=True)):
            skip = features[-2 - level]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = smooth(x + lateral(skip))
        return x


def _centernet_heads(channels: int, head_channels: int, activation: str) -> nn.ModuleDict:
    """Heatmap (1 channel, bias at the prior) and offset (2 channels)
    heads, each a 3x3 convolution, an activation and a 1x1 convolution.
    """
    heads = nn.ModuleDict(
        {
            "heatmap": nn.Sequential(
                _conv3x3(channels, head_channels, bias=True),
                _activation(activation),
                nn.Conv2d(head_channels, 1, 1),
            ),
            "offset": nn.Sequential(
                _conv3x3(channels, head_channels, bias=True),
                _activation(activation),
                nn.Conv2d(head_channels, 2, 1),
            ),
        }
    )
    _init_weights(heads)
    nn.init.normal_(heads["heatmap"][-1].weight, std=1e-2)
    nn.init.constant_(heads["heatmap"][-1].bias, math.log(HEATMAP_PRIOR / (1.0 - HEATMAP_PRIOR)))
    nn.init.normal_(heads["offset"][-1].weight, std=1e-3)
    return heads


# ---------------------------------------------------------------------------
# Networks.
# ---------------------------------------------------------------------------


class _Network(nn.Module):
    """Common behaviour: the architecture dict, padding and encoder access."""

    architecture: dict[str, Any]
    encoder: nn.Module
    stride: int
    pad_mode: str

    def encoder_stages(self) -> list[nn.Module]:
        """Return the encoder stages, shallowest (the stem) first.

        Returns
        -------
        stages : `list` [`torch.nn.Module`]
            Modules whose parameters can be frozen or unfrozen one stage
            at a time (progressive unfreezing starts from the deepest).
        """
        return list(self.encoder.stages)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} needs (N, C, H, W) input, not shape {tuple(x.shape)}.")
        return _pad_to_multiple(x, self.stride, self.pad_mode)

    def extra_repr(self) -> str:
        return f"architecture={self.architecture}"


def _unet_body(a: dict) -> tuple[nn.Module, nn.Module]:
    """Build the residual encoder and attention-gated decoder shared by the U-Net networks."""
    parts = _parse_attention(a["attention"])[1]
    encoder = ResEncoder(
        a["in_channels"],
        a["base_channels"],
        a["depth"],
        a["blocks_per_stage"],
        "se" in parts,
        a["norm"],
        a["activation"],
        a["max_channels"],
        a["dropout"],
    )
    decoder = UNetDecoder(
        encoder.channels,
        "gate" in parts,
        a["blocks_per_stage"],
        "se" in parts,
        a["norm"],
        a["activation"],
        a["dropout"],
    )
    return encoder, decoder


def _check_range(label: str, value: Any, minimum: float, maximum: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be a number, not {value!r}.") from None
    if not minimum <= value <= maximum:
        raise ValueError(f"{label} must be in [{minimum}, {maximum}], not {value}.")
    return value


def _check_line_filters(line_filters: Any) -> list[list[int | float]]:
    """Check and canonicalize the ``[[length, n_angles], ...]`` of `LineFilterBank`."""
    if isinstance(line_filters, str | bytes) or not isinstance(line_filters, Sequence) or not line_filters:
        raise ValueError(
            f"line_filters must be a non-empty list of [length, n_angles], not {line_filters!r}."
        )
    filters = []
    for entry in line_filters:
        if isinstance(entry, str | bytes) or not isinstance(entry, Sequence) or len(entry) != 2:
            raise ValueError(f"each line filter must be [length, n_angles], not {entry!r}.")
        length = _check_range("line filter length", entry[0], 2.0, 200.0)
        filters.append([length, _check_int("line filter n_angles", entry[1], 2, 180)])
    return filters


def line_filter_kernels(length: float, n_angles: int, sigma: float) -> torch.Tensor:
    """Matched filters for straight trails of one length at evenly spaced angles.

    Parameters
    ----------
    length : `float`
        Length of the segment (pixels).
    n_angles : `int`
        Number of orientations, ``pi * k / n_angles`` for ``k`` in
        ``range(n_angles)`` (counter-clockwise from +x).
    sigma : `float`
        Width of the Gaussian PSF the segment is convolved with (pixels).

    Returns
    -------
    kernels : `torch.Tensor`
        ``(n_angles, 1, K, K)`` float32, ``K`` odd and covering the segment
        and 3 sigma either side. Each kernel is the image of a segment of
        the given length through the central pixel, convolved with the
        PSF and sampled at pixel centres (the profile of
        `lsst.trail_detect.detection.postprocess.trail_model`, with values
        under 1e-6 of the peak set to zero), scaled to unit Euclidean
        norm, so that on an image of independent unit normal pixels every
        output is a unit normal variable and on a trail it is the
        matched-filter signal-to-noise ratio of that piece of the trail.
    """
    half = int(math.ceil(0.5 * length + 3.0 * sigma))
    offsets = torch.arange(-half, half + 1, dtype=torch.float64)
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")
    kernels = []
    for k in range(n_angles):
        theta = math.pi * k / n_angles
        along = x * math.cos(theta) + y * math.sin(theta)
        across = -x * math.sin(theta) + y * math.cos(theta)
        scale = math.sqrt(2.0) * sigma
        profile = torch.exp(-0.5 * (across / sigma) ** 2) * (
            torch.erf((0.5 * length - along) / scale) + torch.erf((0.5 * length + along) / scale)
        )
        # The far Gaussian tails are set to zero: as float32 they would be subnormal numbers, which
        # make CPU convolutions several times slower, and they carry no signal.
        profile = torch.where(profile < 1e-6 * profile.max(), 0.0, profile)
        kernels.append(profile / torch.linalg.vector_norm(profile))
    return torch.stack(kernels)[:, None].to(torch.float32)


class LineFilterBank(nn.Module):
    """Fixed matched filters for straight segments, appended as input channels.

    Each ``[length, n_angles]`` entry convolves the first input channel
    (the normalized image, in units of the pixel noise) with
    `line_filter_kernels` of that length, so a trail too faint to stand
    out in any pixel shows as a coherent signal-to-noise ratio along its
    direction, and a star shows the same in every direction: the first
    layer sees both the light a trail adds up along a line and the
    anisotropy that tells it from a point source. The kernels are not
    trained and not stored (they are rebuilt from the architecture).

    The image is clipped to ``[-clip, clip]`` before filtering: faint
    trails, the filters' purpose, are untouched (their pixels are far
    below the clip), while a bright star adds at most ``clip`` times the
    kernel sum instead of swamping the responses; the image channel
    itself keeps the full dynamic range.

    Parameters
    ----------
    line_filters : `list` [[`float`, `int`]]
        ``[length, n_angles]`` per filter set.
    sigma : `float`
        PSF width of the kernels (pixels).
    clip : `float`
        Clip of the image before filtering (noise units).

    Attributes
    ----------
    filters : `list` [[`float`, `int`]]
        The checked ``[length, n_angles]`` sets.
    sigma, clip : `float`
        As given, checked.
    out_channels : `int`
        Number of filter outputs (the sum of ``n_angles``).

    Notes
    -----
    ``forward(x)`` takes ``(N, C, H, W)`` and returns ``(N, C +
    out_channels, H, W)``: the input followed by the filter outputs (zero
    padding at the edges).
    """

    def __init__(self, line_filters: Sequence[Sequence[float]], sigma: float, clip: float):
        super().__init__()
        self.filters = _check_line_filters(line_filters)
        self.sigma = _check_range("line_sigma", sigma, 0.3, 10.0)
        self.clip = _check_range("line_clip", clip, 0.5, 1e4)
        self.out_channels = sum(n_angles for _, n_angles in self.filters)
        for i, (length, n_angles) in enumerate(self.filters):
            kernels = line_filter_kernels(length, n_angles, self.sigma)
            self.register_buffer(f"kernel{i}", kernels, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Append the line-filter responses of the first channel of ``x``."""
        image = x[:, :1].clamp(-self.clip, self.clip)
        outputs = [x]
        for i in range(len(self.filters)):
            kernel = getattr(self, f"kernel{i}").to(dtype=x.dtype)
            outputs.append(F.conv2d(image, kernel, padding=kernel.shape[-1] // 2))
        return torch.cat(outputs, dim=1)


class ResAttentionUNet(_Network):
    """U-Net of residual blocks with squeeze-excitation and attention gates.

    Parameters
    ----------
    in_channels : `int`, optional
        Input image channels.
    out_channels : `int`, optional
        Output logit channels.
    base_channels : `int`, optional
        Channels at full resolution; they double at every downsampling
        (capped at ``max_channels``).
    depth : `int`, optional
        Number of downsamplings (1 to 7). Inputs are padded to a multiple
        of ``2**depth``.
    blocks_per_stage : `int`, optional
        Residual blocks per encoder stage and per decoder level.
    attention : `str`, optional
        ``"gate+se"`` (attention gates on the skip connections and
        squeeze-excitation in the blocks), ``"gate"``, ``"se"`` or
        ``"none"``.
    dropout : `float`, optional
        Channel dropout inside the residual blocks.
    norm : `str`, optional
        ``"batch"``, ``"group"`` or ``"none"``.
    activation : `str`, optional
        ``"silu"`` or ``"relu"``.
    max_channels : `int`, optional
        Cap on the channels of the deeper stages.
    pad_mode : `str`, optional
        How the input is padded to a multiple of ``2**depth``:
        ``"reflect"`` (``"replicate"`` where the image is too small),
        ``"replicate"`` or ``"zeros"``.
    line_filters : `list` [[`float`, `int`]] or `None`, optional
        ``[length, n_angles]`` sets of fixed segment matched filters
        (`LineFilterBank`) whose responses to the first input channel are
        appended to the input before the encoder; `None` for none.
    line_sigma : `float`, optional
        PSF width (pixels) of those filters.
    line_clip : `float`, optional
        Clip of the image before the line filters (noise units).

    Attributes
    ----------
    line_bank : `LineFilterBank` or `None`
        The fixed line filters, if any.
    encoder : `ResEncoder`
        The stem and the downsampling stages (transferable from
        `StarCenterNet`; with line filters its stem has more input
        channels, see `transfer_encoder`).
    decoder : `UNetDecoder`
        Upsampling path with attention-gated skips.
    head : `torch.nn.Conv2d`
        1x1 convolution to ``out_channels`` logits.
    architecture : `dict`
        The dict `build_model` turns back into this network.

    Notes
    -----
    ``forward(x)`` takes ``(N, in_channels, H, W)`` for any ``H``, ``W``
    and returns logits ``(N, out_channels, H, W)``.

    Squeeze-excitation pools over the whole (padded) input, so with
    ``"se"`` the output depends a little on the tile it is computed in;
    tiles overlapping by more than the blending margin hide that.
    Without it the network commutes with shifts by multiples of
    ``2**depth`` away from the tile edges.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 16,
        depth: int = 4,
        blocks_per_stage: int = 1,
        attention: str = "gate+se",
        dropout: float = 0.0,
        norm: str = "batch",
        activation: str = "silu",
        max_channels: int = 512,
        pad_mode: str = "reflect",
        line_filters: Sequence[Sequence[float]] | None = None,
        line_sigma: float = 1.7,
        line_clip: float = 5.0,
    ):
        super().__init__()
        self.line_bank = None if line_filters is None else LineFilterBank(line_filters, line_sigma, line_clip)
        extra = 0 if self.line_bank is None else self.line_bank.out_channels
        a = _validate_unet_kwargs(
            in_channels=in_channels,
            base_channels=base_channels,
            depth=depth,
            blocks_per_stage=blocks_per_stage,
            attention=attention,
            dropout=dropout,
            norm=norm,
            activation=activation,
            max_channels=max_channels,
            pad_mode=pad_mode,
        )
        out_channels = _check_int("out_channels", out_channels, 1)
        self.stride = 2 ** a["depth"]
        self.pad_mode = a["pad_mode"]
        self.encoder, self.decoder = _unet_body({**a, "in_channels": a["in_channels"] + extra})
        self.head = nn.Conv2d(self.decoder.out_channels, out_channels, 1)
        _init_weights(self)
        nn.init.normal_(self.head.weight, std=1e-2)
        # Start from the prior that ~1% of pixels are trail pixels (as RetinaNet does): the
        # background is then right from the first step and training spends itself on the trails.
        nn.init.constant_(self.head.bias, math.log(0.01 / 0.99))
        self.architecture = {"name": "ResAttentionUNet", "out_channels": out_channels, **a}
        if self.line_bank is not None:
            bank = self.line_bank
            self.architecture.update(line_filters=bank.filters, line_sigma=bank.sigma, line_clip=bank.clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(N, out_channels, H, W)`` for images ``(N, C, H, W)``."""
        height, width = x.shape[-2:]
        x = self._pad(x)
        if self.line_bank is not None:
            x = self.line_bank(x)
        features = self.encoder(x)
        y = self.decoder(features)[..., :height, :width]
        return self.head(y)


class StarCenterNet(_Network):
    """CenterNet-style star detector on the `ResAttentionUNet` encoder.

    Parameters
    ----------
    in_channels, base_channels, depth, blocks_per_stage, max_channels : `int`, optional
        As for `ResAttentionUNet`. With equal encoder parameters (see
        `encoder_kwargs`) the encoders of the two networks are
        interchangeable.
    attention, norm, activation, pad_mode : `str`, optional
        As for `ResAttentionUNet`.
    dropout : `float`, optional
        As for `ResAttentionUNet`.
    head_channels : `int` or `None`, optional
        Hidden channels of the heads (``base_channels`` if `None`).

    Attributes
    ----------
    encoder : `ResEncoder`
        Stem and downsampling stages.
    decoder : `UNetDecoder`
        Upsampling path.
    head : `torch.nn.ModuleDict`
        ``"heatmap"`` and ``"offset"`` heads.
    architecture : `dict`
        The dict `build_model` turns back into this network.

    Notes
    -----
    ``forward(x)`` returns a dict with ``"heatmap"``, logits ``(N, 1, H,
    W)`` (the heatmap head bias starts at ``log(0.1 / 0.9)``), and
    ``"offset"``, ``(N, 2, H, W)``: the sub-pixel ``(dx, dy)`` of the
    source from the centre of the peak pixel (linear outputs, targets in
    ``[-0.5, 0.5)``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 16,
        depth: int = 4,
        blocks_per_stage: int = 1,
        attention: str = "gate+se",
        dropout: float = 0.0,
        norm: str = "batch",
        activation: str = "silu",
        max_channels: int = 512,
        pad_mode: str = "reflect",
        head_channels: int | None = None,
    ):
        super().__init__()
        a = _validate_unet_kwargs(
            in_channels=in_channels,
            base_channels=base_channels,
            depth=depth,
            blocks_per_stage=blocks_per_stage,
            attention=attention,
            dropout=dropout,
            norm=norm,
            activation=activation,
            max_channels=max_channels,
            pad_mode=pad_mode,
        )
        if head_channels is not None:
            head_channels = _check_int("head_channels", head_channels, 1)
        self.stride = 2 ** a["depth"]
        self.pad_mode = a["pad_mode"]
        self.encoder, self.decoder = _unet_body(a)
        _init_weights(self)
        c0 = self.decoder.out_channels
        self.head = _centernet_heads(c0, head_channels or c0, a["activation"])
        self.architecture = {"name": "StarCenterNet", **a, "head_channels": head_channels}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"heatmap": (N, 1, H, W) logits, "offset": (N, 2, H, W)}``."""
        height, width = x.shape[-2:]
        y = self.decoder(self.encoder(self._pad(x)))
        return {
            "heatmap": self.head["heatmap"](y)[..., :height, :width],
            "offset": self.head["offset"](y)[..., :height, :width],
        }


class HybridStarDetector(_Network):
    """ResNet-34-style CenterNet with a transformer over candidate peaks.

    Parameters
    ----------
    in_channels : `int`, optional
        Input image channels.
    top_k : `int`, optional
        Candidates taken from the predicted heatmap per image (fewer if
        the image has fewer pixels).
    embed_dim : `int`, optional
        Width of the candidate tokens.
    heads : `int`, optional
        Attention heads (must divide ``embed_dim``).
    layers : `int`, optional
        Transformer encoder layers.
    base_channels : `int`, optional
        Channels of the first ResNet layer (64 in ResNet-34; reduced
        here); the layers have ``base_channels * [1, 2, 4, 8]``.
    blocks : `list` [`int`], optional
        Basic blocks per ResNet layer (ResNet-34: ``[3, 4, 6, 3]``).
    decoder_channels : `int` or `None`, optional
        Channels of the FPN decoder (``base_channels`` if `None`).
    norm, activation : `str`, optional
        See `ResidualBlock` (ReLU as in ResNet by default).
    dropout : `float`, optional
        Dropout in the convolutional blocks and the transformer.
    nms_kernel : `int`, optional
        Size of the max-pooling window that defines a local maximum.
    position_scale : `float`, optional
        Pixel scale of the positional encoding: coordinates are divided
        by it before the sinusoidal encoding (periods from
        ``position_scale`` down to ``position_scale / 2**(frequencies -
        1)`` pixels), so that candidate geometry means the same thing in
        tiles of any size.
    frequencies : `int`, optional
        Number of sinusoidal frequencies per coordinate.
    pad_mode : `str`, optional
        See `ResAttentionUNet`.

    Notes
    -----
    The stem keeps full resolution, the four ResNet layers each halve it
    (total stride 16, inputs padded to a multiple of 16) and an FPN
    decoder brings the features back to full resolution, where the
    heatmap and offset heads work.

    ``forward(x)`` takes *only* the image and returns a dict:

    ``"heatmap"``
        Logits ``(N, 1, H, W)``.
    ``"offset"``
        ``(dx, dy)`` ``(N, 2, H, W)``.
    ``"candidates"``
        ``(N, K, 2)`` float32 pixel coordinates ``(x, y)`` of the ``K = min(top_k,
        H * W)`` highest local maxima (3x3 non-maximum suppression) of
        the predicted heatmap, best first (not differentiable).
    ``"candidate_logits"``
        ``(N, K)`` refined logits: the heatmap logit at the candidate plus
        a correction from the transformer.
    ``"candidate_offset"``
        ``(N, K, 2)`` refined ``(dx, dy)``: the offset at the candidate
        plus a correction.

    Each candidate token is a linear embedding of the decoder features,
    heatmap logit and offset at its pixel plus a sinusoidal encoding of
    its ``(x, y)``; a `torch.nn.TransformerEncoder` lets the candidates
    attend to each other. The correction layers start at zero, so an
    untrained refiner returns the CenterNet values. Supervise the
    candidate outputs with `loss_targets_for_candidates`.
    """

    def __init__(
        self,
        in_channels: int = 1,
        top_k: int = 256,
        embed_dim: int = 64,
        heads: int = 4,
        layers: int = 2,
        base_channels: int = 16,
        blocks: Sequence[int] = (3, 4, 6, 3),
        decoder_channels: int | None = None,
        norm: str = "batch",
        activation: str = "relu",
        dropout: float = 0.0,
        nms_kernel: int = 3,
        position_scale: float = 256.0,
        frequencies: int = 8,
        pad_mode: str = "reflect",
    ):
        super().__init__()
        in_channels = _check_int("in_channels", in_channels, 1)
        top_k = _check_int("top_k", top_k, 1)
        embed_dim = _check_int("embed_dim", embed_dim, 1)
        heads = _check_int("heads", heads, 1)
        if embed_dim % heads:
            raise ValueError(f"heads ({heads}) must divide embed_dim ({embed_dim}).")
        layers = _check_int("layers", layers, 0)
        base_channels = _check_int("base_channels", base_channels, 1)
        if isinstance(blocks, str) or not isinstance(blocks, Sequence) or not blocks:
            raise ValueError(f"blocks must be a non-empty list of block counts, not {blocks!r}.")
        blocks = [_check_int("blocks[]", b, 1) for b in blocks]
        if len(blocks) > 6:
            raise ValueError(f"blocks may have at most 6 layers, not {len(blocks)}.")
        if decoder_channels is not None:
            decoder_channels = _check_int("decoder_channels", decoder_channels, 1)
        norm = _check_choice("norm", norm, _NORMS)
        activation = _check_choice("activation", activation, _ACTIVATIONS)
        dropout = _check_dropout(dropout)
        nms_kernel = _check_int("nms_kernel", nms_kernel, 1)
        if nms_kernel % 2 == 0:
            raise ValueError(f"nms_kernel must be odd, not {nms_kernel}.")
        try:
            position_scale = float(position_scale)
        except (TypeError, ValueError):
            raise ValueError(f"position_scale must be a positive number, not {position_scale!r}.") from None
        if not position_scale > 0:
            raise ValueError(f"position_scale must be positive, not {position_scale}.")
        frequencies = _check_int("frequencies", frequencies, 1, 16)
        pad_mode = _check_choice("pad_mode", pad_mode, _PAD_MODES)

        self.top_k = top_k
        self.nms_kernel = nms_kernel
        self.position_scale = position_scale
        self.stride = 2 ** len(blocks)
        self.pad_mode = pad_mode
        self.encoder = ResNetEncoder(in_channels, base_channels, blocks, norm, activation, dropout)
        self.decoder = FPNDecoder(self.encoder.channels, decoder_channels or base_channels, norm, activation)
        _init_weights(self)
        c_dec = self.decoder.out_channels
        self.head = _centernet_heads(c_dec, c_dec, activation)

        self.register_buffer(
            "frequency_scale",
            2.0 * math.pi * 2.0 ** torch.arange(frequencies, dtype=torch.float32),
            persistent=False,
        )
        self.token_embed = nn.Linear(c_dec + 3, embed_dim)
        self.position_embed = nn.Linear(4 * frequencies, embed_dim)
        if layers > 0:
            layer = nn.TransformerEncoderLayer(
                embed_dim,
                heads,
                dim_feedforward=2 * embed_dim,
                dropout=dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        else:
            self.transformer = nn.Identity()
        self.refine_norm = nn.LayerNorm(embed_dim)
        self.refine_logit = nn.Linear(embed_dim, 1)
        self.refine_offset = nn.Linear(embed_dim, 2)
        for linear in (self.refine_logit, self.refine_offset):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

        self.architecture = {
            "name": "HybridStarDetector",
            "in_channels": in_channels,
            "top_k": top_k,
            "embed_dim": embed_dim,
            "heads": heads,
            "layers": layers,
            "base_channels": base_channels,
            "blocks": blocks,
            "decoder_channels": decoder_channels,
            "norm": norm,
            "activation": activation,
            "dropout": dropout,
            "nms_kernel": nms_kernel,
            "position_scale": position_scale,
            "frequencies": frequencies,
            "pad_mode": pad_mode,
        }

    def _position_encoding(self, xy: torch.Tensor) -> torch.Tensor:
        scaled = xy.unsqueeze(-1) / self.position_scale * self.frequency_scale  # (N, K, 2, F)
        encoding = torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=-1)  # (N, K, 2, 2F)
        return encoding.flatten(-2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Detect stars in images ``(N, C, H, W)``; see the class notes."""
        height, width = x.shape[-2:]
        features = self.decoder(self.encoder(self._pad(x)))
        heatmap = self.head["heatmap"](features)[..., :height, :width]
        offset = self.head["offset"](features)[..., :height, :width]
        features = features[..., :height, :width]

        candidates, index = heatmap_peaks(heatmap, self.top_k, self.nms_kernel, return_index=True)
        n, k = index.shape

        def gather(maps: torch.Tensor) -> torch.Tensor:
            flat = maps.flatten(2)  # (N, C, H*W)
            return flat.gather(2, index.unsqueeze(1).expand(-1, flat.shape[1], -1)).transpose(1, 2)

        logit0 = gather(heatmap)  # (N, K, 1)
        offset0 = gather(offset)  # (N, K, 2)
        tokens = self.token_embed(torch.cat([gather(features), logit0, offset0], dim=-1))
        tokens = tokens + self.position_embed(self._position_encoding(candidates.to(tokens.dtype)))
        tokens = self.refine_norm(self.transformer(tokens))
        return {
            "heatmap": heatmap,
            "offset": offset,
            "candidates": candidates.to(torch.float32),
            "candidate_logits": logit0.squeeze(-1) + self.refine_logit(tokens).squeeze(-1),
            "candidate_offset": offset0 + self.refine_offset(tokens),
        }


def _validate_unet_kwargs(**kwargs: Any) -> dict[str, Any]:
    """Check and canonicalize the encoder/decoder kwargs of the U-Net family."""
    return {
        "in_channels": _check_int("in_channels", kwargs["in_channels"], 1),
        "base_channels": _check_int("base_channels", kwargs["base_channels"], 1),
        "depth": _check_int("depth", kwargs["depth"], 1, 7),
        "blocks_per_stage": _check_int("blocks_per_stage", kwargs["blocks_per_stage"], 1),
        "attention": _parse_attention(kwargs["attention"])[0],
        "dropout": _check_dropout(kwargs["dropout"]),
        "norm": _check_choice("norm", kwargs["norm"], _NORMS),
        "activation": _check_choice("activation", kwargs["activation"], _ACTIVATIONS),
        "max_channels": _check_int("max_channels", kwargs["max_channels"], 1),
        "pad_mode": _check_choice("pad_mode", kwargs["pad_mode"], _PAD_MODES),
    }


# ---------------------------------------------------------------------------
# Candidates.
# ---------------------------------------------------------------------------


def heatmap_peaks(
    heatmap: torch.Tensor, k: int, kernel: int = 3, *, return_index: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Find the ``k`` highest local maxima of heatmaps.

    Parameters
    ----------
    heatmap : `torch.Tensor`
        ``(N, 1, H, W)`` or ``(N, H, W)`` logits or probabilities (the
        ranking is the same for both: sigmoid is monotonic).
    k : `int`
        Peaks per image; ``min(k, H * W)`` are returned.
    kernel : `int`, optional
        Max-pooling window: a pixel is a local maximum where it equals
        the maximum of the window centred on it.
    return_index : `bool`, optional
        Also return the flat pixel indices ``y * W + x``.

    Returns
    -------
    xy : `torch.Tensor`
        ``(N, K, 2)`` int64 pixel coordinates ``(x, y)``, best first.
        Where an image has fewer than ``K`` local maxima the remaining
        entries are the best non-maxima.
    index : `torch.Tensor`
        ``(N, K)`` flat indices (only with ``return_index``).
    """
    if heatmap.ndim == 3:
        heatmap = heatmap.unsqueeze(1)
    if heatmap.ndim != 4 or heatmap.shape[1] != 1:
        raise ValueError(f"heatmap must be (N, 1, H, W) or (N, H, W), not {tuple(heatmap.shape)}.")
    width = heatmap.shape[-1]
    with torch.no_grad():
        h = heatmap.detach().float()
        pooled = F.max_pool2d(h, kernel, stride=1, padding=kernel // 2)
        is_peak = h == pooled
        # Rank peaks above every non-peak, by their value.
        rank = torch.where(is_peak, h, h - (h.max() - h.min() + 1.0) - 1.0).flatten(1)
        k = min(int(k), rank.shape[1])
        index = rank.topk(k, dim=1).indices
        xy = torch.stack([index % width, torch.div(index, width, rounding_mode="floor")], dim=-1)
    return (xy, index) if return_index else xy


def loss_targets_for_candidates(
    candidates: torch.Tensor, truth_xy_list: Sequence[Any], radius: float = 1.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match candidates to true positions for the candidate head's loss.

    Within each image, pairs (candidate, truth) closer than ``radius``
    pixels are matched one to one, closest pairs first (greedy): a matched
    candidate gets label 1 and the offset target ``truth - candidate``;
    every other candidate gets label 0 and a zero offset (mask the offset
    loss with the labels).

    Parameters
    ----------
    candidates : `torch.Tensor`
        ``(N, K, 2)`` candidate pixel coordinates ``(x, y)``, as returned
        by `HybridStarDetector`.
    truth_xy_list : sequence of array-like
        ``N`` arrays ``(M_i, 2)`` of true ``(x, y)`` in the same pixel
        coordinates (``M_i`` may be 0).
    radius : `float`, optional
        Largest matching distance in pixels (inclusive).

    Returns
    -------
    labels : `torch.Tensor`
        ``(N, K)`` float, 1 for matched candidates.
    offset_targets : `torch.Tensor`
        ``(N, K, 2)`` float ``(dx, dy)`` to the matched truth.

    Raises
    ------
    ValueError
        If the shapes do not agree.
    """
    if candidates.ndim != 3 or candidates.shape[-1] != 2:
        raise ValueError(f"candidates must be (N, K, 2), not {tuple(candidates.shape)}.")
    n, k, _ = candidates.shape
    if len(truth_xy_list) != n:
        raise ValueError(f"need {n} truth arrays (one per image), not {len(truth_xy_list)}.")
    device = candidates.device
    dtype = candidates.dtype if candidates.is_floating_point() else torch.float32
    labels = torch.zeros((n, k), dtype=dtype, device=device)
    offsets = torch.zeros((n, k, 2), dtype=dtype, device=device)
    cand_all = candidates.detach().to("cpu", torch.float64)
    for i, truth in enumerate(truth_xy_list):
        truth = torch.as_tensor(np.asarray(truth, dtype=np.float64).reshape(-1, 2))
        if len(truth) == 0 or k == 0:
            continue
        distance = torch.cdist(cand_all[i], truth)  # (K, M)
        ci, ti = torch.nonzero(distance <= radius, as_tuple=True)
        if len(ci) == 0:
            continue
        order = torch.argsort(distance[ci, ti], stable=True)
        used_c: set[int] = set()
        used_t: set[int] = set()
        for c, t in zip(ci[order].tolist(), ti[order].tolist(), strict=True):
            if c in used_c or t in used_t:
                continue
            used_c.add(c)
            used_t.add(t)
            labels[i, c] = 1.0
            offsets[i, c] = (truth[t] - cand_all[i, c]).to(dtype)
    return labels, offsets


# ---------------------------------------------------------------------------
# Architecture dicts.
# ---------------------------------------------------------------------------

NETWORKS: dict[str, type[nn.Module]] = {
    "ResAttentionUNet": ResAttentionUNet,
    "StarCenterNet": StarCenterNet,
    "HybridStarDetector": HybridStarDetector,
}
"""Networks `build_model` knows, by name."""


def build_model(architecture: Mapping[str, Any]) -> nn.Module:
    """Build an (untrained) network from its architecture dict.

    Parameters
    ----------
    architecture : `dict`
        ``{"name": ..., **kwargs}``, ``name`` one of `NETWORKS`; the other
        entries are the constructor's keyword arguments (defaults fill
        the rest). JSON lists are fine where tuples are expected.

    Returns
    -------
    model : `torch.nn.Module`
        The network, with ``model.architecture`` set to the complete dict.

    Raises
    ------
    ValueError
        If the name is unknown or missing, a keyword is not accepted or a
        value is invalid.
    """
    if not isinstance(architecture, Mapping):
        raise ValueError(f"architecture must be a dict with a 'name', not {type(architecture).__name__}.")
    kwargs = dict(copy.deepcopy(dict(architecture)))
    name = kwargs.pop("name", None)
    if not isinstance(name, str) or name not in NETWORKS:
        raise ValueError(f"unknown network name {name!r}; known: {sorted(NETWORKS)}.")
    cls = NETWORKS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"{name} does not accept argument(s) {unknown}; it accepts {sorted(accepted)}.")
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ValueError(f"cannot build {name} from {kwargs}: {error}") from error


def architecture_of(model: nn.Module) -> dict[str, Any]:
    """Return the architecture dict that rebuilds ``model`` (a copy).

    Parameters
    ----------
    model : `torch.nn.Module`
        A network built here (possibly wrapped by ``torch.compile`` or
        `torch.nn.DataParallel`).

    Returns
    -------
    architecture : `dict`
        JSON-serializable ``{"name": ..., **kwargs}``.

    Raises
    ------
    ValueError
        If ``model`` has no architecture.
    """
    for candidate in (model, getattr(model, "_orig_mod", None), getattr(model, "module", None)):
        architecture = getattr(candidate, "architecture", None)
        if isinstance(architecture, dict):
            return copy.deepcopy(architecture)
    raise ValueError(f"{type(model).__name__} was not built by lsst.trail_detect.models.networks.")


def default_architecture(kind: str = "trail", size: str = "compact", **overrides: Any) -> dict[str, Any]:
    """Return the default architecture of a network.

    Parameters
    ----------
    kind : `str`, optional
        ``"trail"`` (`ResAttentionUNet`), ``"star"`` (`StarCenterNet`,
        whose encoder matches the trail network of the same size, for
        pretraining and transfer) or ``"hybrid"``
        (`HybridStarDetector`).
    size : `str`, optional
        ``"compact"``: sized for CPU inference (the trail network's
        forward pass over a 4096x4096 detector in 512x512 tiles takes
        7-8 s on 2 cores after `prepare_for_inference`, two to three times
        longer without; see ``benchmarks/bench_networks.py``), or
        ``"large"``: wider and deeper, for a GPU.
    **overrides
        Entries replacing the defaults (e.g. ``in_channels=2``).

    Returns
    -------
    architecture : `dict`
        Complete architecture dict (`build_model` accepts it).

    Raises
    ------
    ValueError
        If ``kind`` or ``size`` is unknown.
    """
    kind = _check_choice("kind", kind, ("trail", "star", "hybrid"))
    size = _check_choice("size", size, ("compact", "large"))
    encoders = {
        "compact": {
            "base_channels": 12,
            "depth": 4,
            "blocks_per_stage": 1,
            "attention": "gate+se",
            "max_channels": 512,
        },
        "large": {
            "base_channels": 32,
            "depth": 5,
            "blocks_per_stage": 2,
            "attention": "gate+se",
            "max_channels": 256,
        },
    }
    if kind == "trail":
        architecture = {"name": "ResAttentionUNet", **encoders[size]}
    elif kind == "star":
        architecture = {"name": "StarCenterNet", **encoders[size]}
    elif size == "compact":
        architecture = {"name": "HybridStarDetector", "base_channels": 16, "embed_dim": 64, "layers": 2}
    else:
        architecture = {"name": "HybridStarDetector", "base_channels": 32, "embed_dim": 128, "layers": 4}
    architecture.update(overrides)
    return architecture_of(build_model(architecture))


def encoder_kwargs(architecture: Mapping[str, Any] | nn.Module) -> dict[str, Any]:
    """Return the arguments that define a network's encoder.

    Two networks whose `encoder_kwargs` are equal have encoders with the
    same parameter names and shapes, so `transfer_encoder` works between
    them (e.g. `StarCenterNet` to `ResAttentionUNet`).

    Parameters
    ----------
    architecture : `dict` or `torch.nn.Module`
        An architecture dict (defaults are filled in) or a network.

    Returns
    -------
    kwargs : `dict`
        ``{"encoder": class name, ...}``: for the U-Net family
        ``in_channels``, ``base_channels``, ``depth``,
        ``blocks_per_stage``, ``se``, ``norm``, ``activation`` and
        ``max_channels``; for `HybridStarDetector` ``in_channels``,
        ``base_channels``, ``blocks``, ``norm`` and ``activation``.

    Raises
    ------
    ValueError
        If the architecture is invalid.
    """
    if isinstance(architecture, nn.Module):
        full = architecture_of(architecture)
    else:
        full = architecture_of(build_model(architecture))
    if full["name"] == "HybridStarDetector":
        keys = ("in_channels", "base_channels", "blocks", "norm", "activation")
        return {"encoder": "ResNetEncoder", **{key: full[key] for key in keys}}
    keys = ("in_channels", "base_channels", "depth", "blocks_per_stage", "norm", "activation", "max_channels")
    result = {"encoder": "ResEncoder", **{key: full[key] for key in keys}}
    result["se"] = "se" in _parse_attention(full["attention"])[1]
    if full.get("line_filters"):
        # The encoder sees the image and the line-filter channels.
        result["in_channels"] += sum(n_angles for _, n_angles in full["line_filters"])
    return result


def input_conv_key(encoder: nn.Module) -> str:
    """Name (in ``encoder.state_dict()``) of the weight of the encoder's first convolution."""
    for name, module in encoder.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    raise ValueError(f"{type(encoder).__name__} has no convolution.")


def load_widened_state(
    module: nn.Module, state: Mapping[str, torch.Tensor], widen: str | None = None, what: str = "weights"
) -> nn.Module:
    """Load a state dict whose input convolution may have fewer input channels.

    Every entry must match ``module``'s in name and shape, except the
    convolution weight named ``widen``, which may have fewer input
    channels than ``module``'s: those are copied into the first input
    channels and the others start at zero. A network given new input
    channels (e.g. line filters added to a trained `ResAttentionUNet`)
    therefore starts out computing exactly what the trained one did,
    and training then learns to use the new channels.

    Parameters
    ----------
    module : `torch.nn.Module`
        Receives the weights (in place).
    state : `dict` [`str`, `torch.Tensor`]
        The weights to load.
    widen : `str`, optional
        Name of the only entry that may be widened.
    what : `str`, optional
        What the weights are, for the error message.

    Returns
    -------
    module : `torch.nn.Module`
        ``module`` itself.

    Raises
    ------
    ValueError
        If names differ or a shape differs other than by widening.
    """
    dst_state = module.state_dict()
    missing = sorted(set(dst_state) - set(state))
    unexpected = sorted(set(state) - set(dst_state))
    mismatched, merged = [], {}
    for key, value in dst_state.items():
        if key not in state:
            continue
        source = torch.as_tensor(state[key])
        if tuple(source.shape) == tuple(value.shape):
            merged[key] = source
        elif (
            key == widen
            and source.ndim == 4
            and source.shape[0] == value.shape[0]
            and source.shape[2:] == value.shape[2:]
            and source.shape[1] < value.shape[1]
        ):
            widened = torch.zeros_like(value)
            widened[:, : source.shape[1]] = source.to(value.dtype)
            merged[key] = widened
        else:
            mismatched.append(f"{key}: {tuple(source.shape)} vs {tuple(value.shape)}")
    if missing or unexpected or mismatched:
        problems = []
        if mismatched:
            problems.append(f"shape mismatches {mismatched[:5]}{' ...' if len(mismatched) > 5 else ''}")
        if missing:
            problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            problems.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        raise ValueError(f"{what} are not compatible: " + "; ".join(problems) + ".")
    module.load_state_dict(merged)
    return module


def transfer_encoder(src_model: nn.Module | Mapping[str, torch.Tensor], dst_model: nn.Module) -> nn.Module:
    """Copy encoder weights (and normalization statistics) between networks.

    Parameters
    ----------
    src_model : `torch.nn.Module` or `dict` [`str`, `torch.Tensor`]
        A network with an ``encoder`` (e.g. a pretrained `StarCenterNet`),
        or a state dict: either of an encoder or of a whole network
        (then only its ``encoder.`` entries are used).
    dst_model : `torch.nn.Module`
        The network whose ``encoder`` receives the weights (in place).

    Returns
    -------
    dst_model : `torch.nn.Module`
        ``dst_model`` itself.

    Raises
    ------
    ValueError
        If the encoders do not have the same parameter names and shapes,
        except that the first convolution of a destination with line
        filters (see `ResAttentionUNet`) takes their channels as well:
        those weights start at zero (`load_widened_state`).
    """
    dst_encoder = getattr(dst_model, "encoder", None)
    if not isinstance(dst_encoder, nn.Module):
        raise ValueError(f"{type(dst_model).__name__} has no encoder.")
    if isinstance(src_model, nn.Module):
        src_encoder = getattr(src_model, "encoder", None)
        if not isinstance(src_encoder, nn.Module):
            raise ValueError(f"{type(src_model).__name__} has no encoder.")
        state = src_encoder.state_dict()
    elif isinstance(src_model, Mapping):
        state = dict(src_model)
        if any(key.startswith("encoder.") for key in state):
            state = {
                key[len("encoder.") :]: value for key, value in state.items() if key.startswith("encoder.")
            }
    else:
        raise ValueError(f"cannot take encoder weights from a {type(src_model).__name__}.")
    # Only the line-filter channels of a trail network may be missing from the source's input layer.
    widen = input_conv_key(dst_encoder) if getattr(dst_model, "line_bank", None) is not None else None
    load_widened_state(dst_encoder, state, widen=widen, what="encoders")
    return dst_model


def set_encoder_trainable(model: nn.Module, trainable_stages: int | None = None) -> list[nn.Module]:
    """Freeze the encoder except its deepest stages (progressive unfreezing).

    Parameters
    ----------
    model : `torch.nn.Module`
        A network with ``encoder_stages()``.
    trainable_stages : `int` or `None`, optional
        How many of the deepest encoder stages get ``requires_grad=True``;
        the others are frozen. `None` unfreezes the whole encoder and 0
        freezes it all. The decoder and heads are not touched.

    Returns
    -------
    frozen : `list` [`torch.nn.Module`]
        The frozen stages (keep their normalization layers in eval mode
        while training if their statistics should stay fixed).
    """
    stages = model.encoder_stages()
    n_trainable = len(stages) if trainable_stages is None else max(int(trainable_stages), 0)
    frozen = stages[: max(len(stages) - n_trainable, 0)]
    for i, stage in enumerate(stages):
        trainable = i >= len(stages) - n_trainable
        for parameter in stage.parameters():
            parameter.requires_grad_(trainable)
    return frozen


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Return the number of parameters of ``model``.

    Parameters
    ----------
    model : `torch.nn.Module`
        Any module.
    trainable_only : `bool`, optional
        Count only parameters with ``requires_grad``.

    Returns
    -------
    count : `int`
        Number of scalar parameters.
    """
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


def model_size_bytes(model: nn.Module) -> int:
    """Return the bytes of a model's parameters and buffers (its state dict).

    Parameters
    ----------
    model : `torch.nn.Module`
        Any module.

    Returns
    -------
    size : `int`
        Bytes held by the state dict's tensors.
    """
    return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))


def _fuse_batchnorm(module: nn.Module) -> None:
    """Fold every BatchNorm2d that follows a Conv2d into it (in place, eval)."""
    if isinstance(module, ResidualBlock):
        for conv_name, norm_name in (("conv1", "norm1"), ("conv2", "norm2")):
            conv, norm = getattr(module, conv_name), getattr(module, norm_name)
            if isinstance(norm, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
                setattr(module, norm_name, nn.Identity())
    if isinstance(module, nn.Sequential):
        children = list(module)
        for i in range(len(children) - 1):
            if isinstance(children[i], nn.Conv2d) and isinstance(children[i + 1], nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(children[i], children[i + 1])
                module[i + 1] = nn.Identity()
    for child in module.children():
        _fuse_batchnorm(child)


def prepare_for_inference(
    model: nn.Module, *, fuse_batchnorm: bool = True, channels_last: bool = True
) -> nn.Module:
    """Return an inference copy of a network: eval mode, batch
    normalization folded into the convolutions and channels-last weights.

    On CPU this about halves the forward time (see
    ``benchmarks/bench_networks.py``); the outputs agree with
    ``model.eval()`` to float32 rounding.

    Parameters
    ----------
    model : `torch.nn.Module`
        A network (left unchanged).
    fuse_batchnorm : `bool`, optional
        Fold `torch.nn.BatchNorm2d` layers into the preceding convolutions.
    channels_last : `bool`, optional
        Store the weights in `torch.channels_last` memory format, which
        makes the convolutions choose the faster channels-last kernels
        (the outputs then have channels-last strides).

    Returns
    -------
    inference_model : `torch.nn.Module`
        The prepared copy (with the same ``architecture``), with
        ``requires_grad`` off. Do not train or store it: its state dict
        no longer matches `build_model` ``(architecture)``; store the
        original.
    """
    inference_model = copy.deepcopy(model).eval()
    if fuse_batchnorm:
        _fuse_batchnorm(inference_model)
    if channels_last:
        inference_model = inference_model.to(memory_format=torch.channels_last)
    for parameter in inference_model.parameters():
        parameter.requires_grad_(False)
    return inference_model
