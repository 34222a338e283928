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

"""A trained network with everything needed to use it, in one safetensors file.

A `TrailDetectorModel` bundles the weights of a network (its
``state_dict``), the architecture description its builder turns back into a
`torch.nn.Module`, and JSON metadata: how inputs were normalized, the
provenance of the training data, validation metrics, the operating
threshold and the score calibration.

File format
-----------
One ``.safetensors`` file.  The tensors are the ``state_dict`` entries; the
header's ``__metadata__`` (a str -> str mapping) holds

``format``
    ``lsst.trail_detect.model``.
``format_version``
    `FORMAT_VERSION`, as a decimal string.
``kind``
    ``trail`` or ``star``.
``architecture``, ``metadata``
    JSON (keys sorted).
``sha256``
    Hex SHA-256 of the tensor data in canonical form (see `tensor_checksum`).
``metadata_sha256``
    Hex SHA-256 of the canonical JSON of kind, architecture and metadata.

Reading never unpickles anything: the file is parsed as safetensors (a
JSON header and raw little-endian buffers) and both checksums are verified;
anything else raises `ModelIntegrityError`.  Writing goes to a temporary
file in the destination directory that replaces the destination only once
complete.
"""

from __future__ import annotations

__all__ = (
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MODEL_KINDS",
    "ModelIntegrityError",
    "TrailDetectorModel",
    "TrailDetectorModelFormatter",
    "tensor_checksum",
)

import copy
import hashlib
import json
import os
import secrets
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsst.daf.butler import FormatterV2

if TYPE_CHECKING:
    import torch

    from lsst.resources import ResourcePath

    from ..tiles.normalization import Normalization

FORMAT_NAME = "lsst.trail_detect.model"
"""Value of the ``format`` header entry."""

FORMAT_VERSION = 1
"""Version of the file layout written by `TrailDetectorModel.save`."""

MODEL_KINDS = ("trail", "star")
"""Kinds of model: trail segmentation or star (point-source) detection."""

_MAX_HEADER_BYTES = 100 * 1024 * 1024


class ModelIntegrityError(ValueError):
    """A model file is not a valid, intact `TrailDetectorModel` file."""


def _json_default(value: Any) -> Any:
    """Convert numpy scalars and arrays for `json.dumps`."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serializable.")


def _dumps(value: Any) -> str:
    """Encode to canonical JSON (sorted keys, no whitespace)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)


def _as_torch(value: Any) -> torch.Tensor:
    """Return a contiguous CPU torch tensor for a tensor or array."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
    elif isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
        if not array.flags.writeable:
            array = array.copy()  # torch.from_numpy warns about read-only arrays.
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        # Not np.ascontiguousarray: it turns 0-d arrays into 1-d ones.
        tensor = torch.from_numpy(np.require(array, requirements="C"))
    else:
        raise TypeError(f"a model tensor must be a torch tensor or numpy array, not {type(value).__name__}.")
    return tensor.contiguous()


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Return the raw (native, little-endian on supported platforms) bytes."""
    import torch

    return tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def tensor_checksum(tensors: Mapping[str, Any]) -> str:
    """Return the hex SHA-256 of tensors in canonical form.

    Parameters
    ----------
    tensors : `~collections.abc.Mapping` [`str`, `torch.Tensor` or `numpy.ndarray`]
        Named tensors.

    Returns
    -------
    checksum : `str`
        For each name in sorted order, the hash is fed the UTF-8 name, the
        torch dtype name (e.g. ``float32``), the shape as comma-separated
        decimal integers, each followed by a NUL byte, then the length of
        the data as an 8-byte little-endian integer and the data (C order).
        Independent of dict order and of how the tensors were stored.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = _as_torch(tensors[name])
        data = _tensor_bytes(tensor)
        dtype = str(tensor.dtype).removeprefix("torch.")
        shape = ",".join(str(int(n)) for n in tensor.shape)
        digest.update(f"{name}\0{dtype}\0{shape}\0".encode())
        digest.update(struct.pack("<Q", len(data)))
        digest.update(data)
    return digest.hexdigest()


def _metadata_checksum(kind: str, architecture: dict, metadata: dict) -> str:
    """Return the hex SHA-256 of the canonical JSON of the descriptive parts."""
    text = _dumps({"architecture": architecture, "kind": kind, "metadata": metadata})
    return hashlib.sha256(text.encode()).hexdigest()


class TrailDetectorModel:
    """A trained network packaged with its architecture and metadata.

    Parameters
    ----------
    kind : `str`
        ``trail`` (segmentation of trails) or ``star`` (point-source
        heatmap and offsets); one of `MODEL_KINDS`.
    architecture : `dict`
        JSON-able description from which the builder (by default
        ``lsst.trail_detect.models.networks.build_model``) makes the module.
    tensors : `dict` [`str`, `torch.Tensor` or `numpy.ndarray`]
        The ``state_dict``.
    metadata : `dict`, optional
        JSON-able.  Conventional keys: ``normalization`` (the fields of a
        `~lsst.trail_detect.tiles.normalization.Normalization`; the
        per-detector ``background`` and ``scale`` are recomputed at
        inference, ``method``, ``clip_min`` and ``clip_max`` are what
        matter), ``threshold`` (operating threshold on the score, chosen on
        validation data), ``score_calibration`` (e.g. isotonic or Platt
        parameters as lists), ``provenance`` (collections, shard data IDs,
        seeds), ``validation`` (metrics) and ``package_version``.

    Raises
    ------
    ValueError
        If ``kind`` is unknown or architecture or metadata are not
        JSON-serializable dicts.
    TypeError
        If a tensor is neither a torch tensor nor a numpy array.

    Notes
    -----
    Architecture and metadata are stored as JSON, so after a round trip
    tuples come back as lists and numpy scalars as Python numbers.
    """

    def __init__(
        self,
        *,
        kind: str,
        architecture: Mapping[str, Any],
        tensors: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
    ):
        if kind not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {MODEL_KINDS}, not {kind!r}.")
        self.kind = kind
        self.architecture = dict(architecture)
        self.tensors = dict(tensors)
        self.metadata = dict(metadata) if metadata is not None else {}
        for label, value in (("architecture", self.architecture), ("metadata", self.metadata)):
            try:
                _dumps(value)
            except (TypeError, ValueError) as err:
                raise ValueError(f"model {label} is not JSON-serializable: {err}") from err
        for name, value in self.tensors.items():
            if not isinstance(name, str):
                raise TypeError(f"tensor names must be strings, not {name!r}.")
            _as_torch(value)

    @classmethod
    def from_module(
        cls,
        module: torch.nn.Module,
        *,
        kind: str,
        architecture: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
    ) -> TrailDetectorModel:
        """Package the current weights of a module.

        Parameters
        ----------
        module : `torch.nn.Module`
            The trained network; its ``state_dict`` is copied to contiguous
            CPU tensors (later training does not change the package).
        kind : `str`
            ``trail`` or ``star``.
        architecture : `dict`
            Description the builder turns back into ``module``.
        metadata : `dict`, optional
            See `TrailDetectorModel`; ``package_version`` and
            ``torch_version`` are added if absent.

        Returns
        -------
        model : `TrailDetectorModel`
            The package.
        """
        import torch

        from .. import __version__

        tensors = {}
        for name, value in module.state_dict().items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"state_dict entry {name!r} is a {type(value).__name__}, not a tensor.")
            tensors[name] = value.detach().to("cpu", copy=True).contiguous()
        metadata = copy.deepcopy(dict(metadata or {}))
        metadata.setdefault("package_version", __version__)
        metadata.setdefault("torch_version", torch.__version__)
        return cls(
            kind=kind, architecture=copy.deepcopy(dict(architecture)), tensors=tensors, metadata=metadata
        )

    def build(
        self,
        builder: Callable[[dict], torch.nn.Module] | None = None,
        device: str | torch.device = "cpu",
    ) -> torch.nn.Module:
        """Make the network and load the weights.

        Parameters
        ----------
        builder : callable, optional
            Called with a copy of the architecture dict, returns an
            untrained module.  Defaults to
            ``lsst.trail_detect.models.networks.build_model``.
        device : `str` or `torch.device`, optional
            Where to put the module.

        Returns
        -------
        module : `torch.nn.Module`
            In evaluation mode, weights loaded strictly (every parameter
            and buffer must match by name and shape).

        Raises
        ------
        RuntimeError
            If the weights do not fit the built module.
        """
        if builder is None:
            from .networks import build_model as builder
        module = builder(copy.deepcopy(self.architecture))
        module.load_state_dict(self.torch_tensors(), strict=True)
        module.to(device)
        module.eval()
        return module

    def torch_tensors(self) -> dict[str, torch.Tensor]:
        """Return the tensors as contiguous CPU torch tensors (name-sorted)."""
        return {name: _as_torch(self.tensors[name]) for name in sorted(self.tensors)}

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the tensor data (`str`, see `tensor_checksum`)."""
        return tensor_checksum(self.tensors)

    @property
    def threshold(self) -> float | None:
        """Operating threshold on the score (`float`), `None` if not set."""
        value = self.metadata.get("threshold")
        return None if value is None else float(value)

    @property
    def normalization(self) -> Normalization | None:
        """How inputs must be normalized
        (`~lsst.trail_detect.tiles.normalization.Normalization`), `None` if
        not recorded.
        """
        from ..tiles.normalization import Normalization

        value = self.metadata.get("normalization")
        return None if value is None else Normalization.from_json(value)

    @property
    def n_parameters(self) -> int:
        """Total number of elements in all tensors (`int`)."""
        return sum(int(_as_torch(t).numel()) for t in self.tensors.values())

    def size_bytes(self) -> int:
        """Return the size of the tensor data in bytes (not counting the header)."""
        total = 0
        for value in self.tensors.values():
            tensor = _as_torch(value)
            total += int(tensor.numel()) * tensor.element_size()
        return total

    def summary(self) -> str:
        """Return a one-line description."""
        arch = next(
            (str(self.architecture[k]) for k in ("name", "type", "architecture") if k in self.architecture),
            "?",
        )
        threshold = self.threshold
        thr = "unset" if threshold is None else f"{threshold:.4g}"
        norm = self.metadata.get("normalization", {})
        method = norm.get("method", "?") if isinstance(norm, Mapping) else "?"
        return (
            f"{self.kind} model {arch}: {self.n_parameters:,} parameters in {len(self.tensors)} tensors "
            f"({self.size_bytes() / 1e6:.2f} MB), normalization {method}, threshold {thr}, "
            f"sha256 {self.sha256[:12]}"
        )

    def __repr__(self) -> str:
        return f"<TrailDetectorModel {self.summary()}>"

    def _header_metadata(self) -> dict[str, str]:
        """Return the ``__metadata__`` entries for the file header."""
        return {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "kind": self.kind,
            "architecture": _dumps(self.architecture),
            "metadata": _dumps(self.metadata),
            "sha256": self.sha256,
            "metadata_sha256": _metadata_checksum(self.kind, self.architecture, self.metadata),
        }

    def to_bytes(self) -> bytes:
        """Serialize to the bytes of a ``.safetensors`` file."""
        from safetensors.torch import save

        # Independent copies, so that tensors sharing memory (tied weights)
        # are accepted by safetensors.
        tensors = {name: tensor.clone() for name, tensor in self.torch_tensors().items()}
        return save(tensors, metadata=self._header_metadata())

    def save(self, path: str | os.PathLike) -> Path:
        """Write to a ``.safetensors`` file, atomically.

        Parameters
        ----------
        path : path-like
            Destination.  The data go to a temporary file in the same
            directory that replaces ``path`` only once completely written
            and flushed; on any failure ``path`` is left as it was and the
            temporary file is removed.

        Returns
        -------
        path : `pathlib.Path`
            The destination.
        """
        path = Path(path)
        payload = self.to_bytes()
        # Created with O_EXCL under a unique name, with the usual permissions
        # (0o666 less the umask) rather than mkstemp's 0o600.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(payload)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "<bytes>") -> TrailDetectorModel:
        """Parse and verify the bytes of a ``.safetensors`` model file.

        Parameters
        ----------
        data : `bytes`
            File content.
        source : `str`, optional
            Name used in error messages.

        Returns
        -------
        model : `TrailDetectorModel`
            With torch tensors.

        Raises
        ------
        ModelIntegrityError
            If ``data`` is not a safetensors file, lacks the model metadata,
            has an unsupported format version or kind, or a checksum does
            not match.
        """
        header = _parse_header(data, source)
        meta = header.get("__metadata__")
        if not isinstance(meta, dict):
            raise ModelIntegrityError(f"{source}: safetensors file has no model metadata.")
        required = (
            "format",
            "format_version",
            "kind",
            "architecture",
            "metadata",
            "sha256",
            "metadata_sha256",
        )
        missing = [key for key in required if key not in meta]
        if missing:
            raise ModelIntegrityError(f"{source}: model metadata lacks {', '.join(missing)}.")
        if meta["format"] != FORMAT_NAME:
            raise ModelIntegrityError(f"{source}: format is {meta['format']!r}, not {FORMAT_NAME!r}.")
        if meta["format_version"] != str(FORMAT_VERSION):
            raise ModelIntegrityError(
                f"{source}: unsupported model format version {meta['format_version']!r} "
                f"(this code reads {FORMAT_VERSION})."
            )
        kind = meta["kind"]
        if kind not in MODEL_KINDS:
            raise ModelIntegrityError(f"{source}: unsupported model kind {kind!r}.")
        try:
            architecture = json.loads(meta["architecture"])
            metadata = json.loads(meta["metadata"])
        except json.JSONDecodeError as err:
            raise ModelIntegrityError(f"{source}: model metadata is not valid JSON: {err}") from err
        if not isinstance(architecture, dict) or not isinstance(metadata, dict):
            raise ModelIntegrityError(f"{source}: architecture and metadata must be JSON objects.")
        if meta["metadata_sha256"] != _metadata_checksum(kind, architecture, metadata):
            raise ModelIntegrityError(
                f"{source}: checksum of kind, architecture and metadata does not match."
            )

        from safetensors.torch import load

        try:
            tensors = load(data)
        except Exception as err:
            raise ModelIntegrityError(f"{source}: cannot read the tensors: {err}") from err
        checksum = tensor_checksum(tensors)
        if checksum != meta["sha256"]:
            raise ModelIntegrityError(
                f"{source}: tensor checksum {checksum} does not match the recorded {meta['sha256']}; "
                "the file is corrupt or was modified."
            )
        return cls(kind=kind, architecture=architecture, tensors=tensors, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrailDetectorModel:
        """Read and verify a model file written by `save`.

        Parameters
        ----------
        path : path-like
            A ``.safetensors`` file.

        Returns
        -------
        model : `TrailDetectorModel`
            With torch CPU tensors.

        Raises
        ------
        ModelIntegrityError
            If the file is not a model file of a supported version and kind
            or a checksum does not match.  Nothing in the file is ever
            unpickled.
        """
        path = Path(path)
        with open(path, "rb") as stream:
            data = stream.read()
        return cls.from_bytes(data, source=str(path))


def _parse_header(data: bytes, source: str) -> dict:
    """Return the JSON header of safetensors bytes, checking its framing."""
    if len(data) < 10:
        raise ModelIntegrityError(f"{source}: too short ({len(data)} bytes) to be a safetensors file.")
    (size,) = struct.unpack("<Q", data[:8])
    if size < 2 or size > min(len(data) - 8, _MAX_HEADER_BYTES) or data[8:9] != b"{":
        raise ModelIntegrityError(f"{source}: not a safetensors file (bad header).")
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelIntegrityError(f"{source}: not a safetensors file (header is not JSON: {err}).") from err
    if not isinstance(header, dict):
        raise ModelIntegrityError(f"{source}: not a safetensors file (header is not a JSON object).")
    return header


class TrailDetectorModelFormatter(FormatterV2):
    """Butler formatter reading and writing `TrailDetectorModel` as safetensors."""

    default_extension = ".safetensors"
    supported_extensions = frozenset({".safetensors"})
    can_read_from_local_file = True

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        # Docstring inherited.
        return TrailDetectorModel.load(path)

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        # Docstring inherited.
        if not isinstance(in_memory_dataset, TrailDetectorModel):
            raise TypeError(f"expected a TrailDetectorModel, not {type(in_memory_dataset).__name__}.")
        in_memory_dataset.save(uri.ospath)
