"""Checkpoints of an Evolution: one safetensors file (never pickle).

Tensors: the archive (params, S, filled, train, version), the generator state, the
lineage and the curve; the safetensors metadata holds one JSON document with the
configuration, the counters and whatever the caller adds (`extra`: the task, the
variant). Files are written to a temporary name and renamed, so a checkpoint on
disk is always complete.
"""
import json
import os

import torch

from .evolve import LINEAGE_FIELDS

FORMAT = "m2n2-evolution/1"
_LINEAGE_INT = ("pass", "step", "child", "first", "second", "split", "replaced")
_LINEAGE_FLOAT = ("w", "child_train")


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError as e:  # a declared dependency; say so if it went missing
        raise ImportError("checkpoints need the safetensors package: pip install safetensors") from e
    return st


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def save_evolution(evo, path, *, extra=None, params=True):
    """Write `evo` to `path`; params=False leaves the archive's parameters out (a
    sharded run writes them one file per rank: m2n2.distributed.checkpoint)."""
    st = _safetensors()
    evo._flush_lineage()
    rows = evo.lineage
    index = {f: i for i, f in enumerate(LINEAGE_FIELDS)}
    lin_int = torch.tensor([[r[index[f]] for f in _LINEAGE_INT] for r in rows], dtype=torch.int64).reshape(-1, len(_LINEAGE_INT))
    lin_float = torch.tensor([[r[index[f]] for f in _LINEAGE_FLOAT] for r in rows], dtype=torch.float64).reshape(
        -1, len(_LINEAGE_FLOAT)
    )
    curve = torch.tensor(
        list(zip(evo.curve["forward_passes"], evo.curve["train_accuracy"], evo.curve["test_accuracy"])),
        dtype=torch.float64,
    ).reshape(-1, 3)
    tensors = {f"archive.{k}": v.detach().cpu().contiguous() for k, v in evo.archive.tensors().items()
               if params or k != "params"}
    tensors.update(
        {
            "generator.state": evo.generator.get_state().cpu(),
            "lineage.int": lin_int,
            "lineage.float": lin_float,
            "curve": curve,
        }
    )
    meta = {
        "format": FORMAT,
        "config": evo.config.to_dict(),
        "step": evo.step_count,
        "passes": evo.passes,
        "seconds": evo.seconds,
        "n": evo.n,
        "d": evo.d,
        "param_dtype": _dtype_name(evo.archive.params.dtype),
        "score_dtype": _dtype_name(evo.archive.S.dtype),
        "device_type": evo.device.type,
        "extra": extra or {},
    }
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        st.save_file(tensors, tmp, metadata={"m2n2": json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_metadata(path):
    """The JSON metadata of a checkpoint; ValueError when the file is missing,
    truncated or not an m2n2 checkpoint."""
    _safetensors()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ValueError(f"checkpoint {path} is corrupt or not a safetensors file ({e})") from None
    if "m2n2" not in meta:
        raise ValueError(f"checkpoint {path} is not an m2n2 checkpoint (no 'm2n2' metadata)")
    try:
        meta = json.loads(meta["m2n2"])
    except json.JSONDecodeError as e:
        raise ValueError(f"checkpoint {path} has corrupt metadata ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_evolution(evo, path, *, expect_extra=None, params=True):
    """Restore `evo` (built with the same configuration and evaluation) from `path`.
    Refuses a checkpoint of another configuration, shape or task, naming what
    differs. Returns the checkpoint's `extra` dict. params=False leaves the archive's
    parameters as they are (the caller loads them: a sharded run)."""
    st = _safetensors()
    meta = read_metadata(path)
    mine = evo.config.to_dict()
    theirs = dict(meta["config"])
    # A run may be continued for more passes; everything else must match.
    diff = sorted(k for k in mine if k != "forward_passes" and theirs.get(k) != mine[k])
    if diff:
        detail = ", ".join(f"{k}: checkpoint {theirs.get(k)!r} vs now {mine[k]!r}" for k in diff)
        raise ValueError(f"checkpoint {path} is from another configuration ({detail})")
    for key, value in (
        ("n", evo.n),
        ("d", evo.d),
        ("param_dtype", _dtype_name(evo.archive.params.dtype)),
        ("score_dtype", _dtype_name(evo.archive.S.dtype)),
    ):
        if meta.get(key) != value:
            raise ValueError(f"checkpoint {path} has {key}={meta.get(key)!r}, this run has {value!r}")
    if expect_extra is not None:
        for key, value in expect_extra.items():
            if meta["extra"].get(key) != value:
                raise ValueError(
                    f"checkpoint {path} has {key}={meta['extra'].get(key)!r}, this run has {value!r}"
                )
    try:
        tensors = st.load_file(os.fspath(path))
    except Exception as e:
        raise ValueError(f"checkpoint {path} is corrupt ({e})") from None
    try:
        evo.archive.load_tensors({k[len("archive."):]: v for k, v in tensors.items() if k.startswith("archive.")},
                                 skip=() if params else ("params",))
        state = tensors["generator.state"]
        lin_int, lin_float, curve = tensors["lineage.int"], tensors["lineage.float"], tensors["curve"]
    except KeyError as e:
        raise ValueError(f"checkpoint {path} lacks tensor {e}") from None
    evo.generator.set_state(state)
    evo.step_count = int(meta["step"])
    evo.passes = int(meta["passes"])
    evo.seconds = float(meta.get("seconds", 0.0))
    ints, floats = lin_int.tolist(), lin_float.tolist()
    evo.lineage = [
        (i[0], i[1], i[2], i[3], i[4], i[5], f[0], f[1], i[6]) for i, f in zip(ints, floats)
    ]
    evo._pending = []
    evo.curve = {
        "forward_passes": [int(v) for v in curve[:, 0].tolist()],
        "train_accuracy": curve[:, 1].tolist(),
        "test_accuracy": curve[:, 2].tolist(),
    }
    evo._test_cache = (None, None, float("nan"))
    return meta["extra"]
