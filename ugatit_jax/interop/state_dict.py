"""PyTorch state dicts in and out of NNX modules, one mechanism for every network we read: the official generators
and discriminators (``torch_import.py``) and pytorch-fid's Inception (``evaluation/inception.py``) each only list
their entries; reading, checking, writing and saving happen here, with one set of errors.

An entry is ``(torch key, getter of our variable, to_ours, to_torch)``: the two layout conversions use only array
methods (``.transpose``, ``.reshape``, ``.T``), so they run in numpy when a file is read or written (an eager jnp
op would compile one XLA program per weight shape: seconds for a model) and trace under ``jax.eval_shape``, which
gives a variable's torch shape without materialising it (the full generator's first MLP layer holds 268M floats).

Loading checks every key and every shape before it writes anything, so a rejected file leaves the module as it
was. torch is an optional extra, imported only to read or write a file, and always loads with ``weights_only=True``
(no arbitrary unpickling).
"""

from __future__ import annotations

import os
import pickle  # only to recognise torch's refusal to unpickle; nothing here unpickles
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ugatit_jax.errors import ExpectedError

Converter = Callable[[np.ndarray], np.ndarray]
Entry = tuple[str, Callable[[], nnx.Variable], Converter, Converter]


class CheckpointMismatchError(ExpectedError, ValueError):
    """A file or state dict does not fit the module: not a state dict of tensors, or a missing, unexpected or
    wrongly shaped key."""


def attribute(owner, name: str) -> Callable[[], nnx.Variable]:
    """An entry's getter: ``owner.name`` when the entry is read or written."""
    return lambda: getattr(owner, name)


def identity(a):
    return a


def conv_to_ours(w):
    return w.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def conv_to_torch(k):
    return k.transpose(3, 2, 0, 1)  # HWIO -> OIHW


def transpose(w):
    return w.T  # a linear layer's (out, in) <-> our (in, out)


def torch_shape(var: nnx.Variable, to_torch: Converter) -> tuple[int, ...]:
    """The torch-layout shape of ``var``, derived without materialising anything."""
    return tuple(jax.eval_shape(to_torch, jax.ShapeDtypeStruct(var[...].shape, jnp.float32)).shape)


def to_numpy(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch.Tensor
        return x.detach().cpu().float().numpy()
    return np.asarray(x)


def load_state_dict(
    entries: Iterable[Entry], state_dict: Mapping, *, source: str = "", prefix: str = "", hint: str = ""
) -> None:
    """Copy ``state_dict`` (numpy arrays or torch tensors, torch layouts) into the entries' variables; strict.

    Errors name ``source`` (a file) first when given, the key as ``prefix + key`` (the network's name in a file of
    several) and end with ``hint``: what the caller knows about a file that does not fit.
    """
    entries = list(entries)
    where = f"{source}: " if source else ""
    expected = {key for key, *_ in entries}
    missing = sorted(expected - set(state_dict))
    if missing:
        raise CheckpointMismatchError(
            f"{where}missing key {prefix + missing[0]!r} ({len(missing)} missing in all){hint}"
        )
    unexpected = sorted(set(state_dict) - expected)
    if unexpected:
        raise CheckpointMismatchError(
            f"{where}unexpected key {prefix + unexpected[0]!r} ({len(unexpected)} unexpected in all){hint}"
        )
    values = []
    for key, get_var, _, to_torch in entries:
        value = np.asarray(to_numpy(state_dict[key]), dtype=np.float32)
        want = torch_shape(get_var(), to_torch)
        if value.shape != want:
            raise CheckpointMismatchError(
                f"{where}wrong shape for key {prefix + key!r}: the model expects {want}, the file has "
                f"{value.shape}{hint}"
            )
        values.append(value)
    for (_, get_var, to_ours, _), value in zip(entries, values, strict=True):
        var = get_var()
        var[...] = jnp.asarray(np.asarray(to_ours(value), dtype=var[...].dtype))  # numpy: no XLA program


def state_dict(entries: Iterable[Entry]) -> dict[str, np.ndarray]:
    """The entries' variables as a state dict: float32 numpy arrays in torch layouts, in entry order."""
    return {
        key: np.ascontiguousarray(to_torch(np.asarray(get_var()[...], np.float32)))
        for key, get_var, _, to_torch in entries
    }


def import_torch():
    try:
        import torch  # optional: only reading or writing a file needs it
    except ImportError as e:
        raise ImportError(
            "reading or writing PyTorch .pt / .pth files needs PyTorch: pip install 'ugatit-jax[torch]'"
        ) from e
    return torch


def _why_unreadable(path: str, error: Exception) -> str:
    """What ``path`` is not, in this project's words. torch's own message is not relayed: for a file holding
    pickled objects it advises re-running with ``weights_only=False``, i.e. running the file's code."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # neither a zip archive nor a pickle stream
        return "it is not a PyTorch checkpoint (neither torch.save's zip archive nor its legacy format)"
    if isinstance(error, pickle.UnpicklingError) or "weights_only" in str(error).lower():
        return (
            "it holds pickled Python objects besides tensors, and this program never unpickles code; use a file "
            "that holds only tensors (a state dict saved with torch.save)"
        )
    if head.startswith(b"PK"):
        return "it is a zip archive but not one written by torch.save (or it is truncated or damaged)"
    return "it is a pickle stream but not a torch.save checkpoint (or it is truncated or damaged)"


def torch_load(path: str | os.PathLike, *, hint: str = ""):
    """``torch.load(path, weights_only=True)`` on the CPU; a file it refuses (corrupt, foreign, or pickled code) is
    one ``CheckpointMismatchError`` naming the file and what it is not."""
    torch = import_torch()
    path = os.fspath(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise CheckpointMismatchError(
            f"{path}: not a readable PyTorch file of tensors: {_why_unreadable(path, e)}{hint}"
        ) from None


def torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` of a state dict, or a dict of them, of numpy arrays (as tensors)."""
    torch = import_torch()

    def tensors(tree):
        return {k: tensors(v) if isinstance(v, Mapping) else torch.from_numpy(np.array(v)) for k, v in tree.items()}

    torch.save(tensors(obj), os.fspath(path))
