"""Checkpoints of a sharded run: one safetensors file per rank plus the replicated state.

A checkpoint is a folder:

    LATEST                          the name of the last complete generation
    passes-000000001200/
        state.safetensors           S, scores, generator, lineage, curve (rank 0 writes it)
        shard-00000-of-00002.safetensors    rank 0's columns of every archive model
        shard-00001-of-00002.safetensors

Each file is written under a temporary name and renamed. A generation counts only
once every rank has written its shard (a barrier) and rank 0 has written the state
and then LATEST (renamed into place); the previous generation is deleted after
that. A run killed at any moment therefore leaves LATEST naming a complete
generation. The folder must be on a file system every rank sees.

Every file carries the run's id and pass count; a resume refuses missing shards,
shards of another run or of another point of the same run, naming the file. A
checkpoint written by R ranks is resumed by any number of ranks: each rank reads
from every old shard file just the runs of global elements it now holds (the
layouts of both are FSDP2's, computed from the parameter shapes).
"""
import json
import os
import shutil

import torch

from ..checkpoint import _safetensors, load_evolution, read_metadata, save_evolution
from .layout import ShardLayout

LATEST = "LATEST"
SHARD_FORMAT = "m2n2-shard/1"


def _shard_name(rank, world):
    return f"shard-{rank:05d}-of-{world:05d}.safetensors"


def _write_atomic(path, write):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_sharded(evo, folder, *, extra=None):
    """Collective: every rank writes its shard, then rank 0 the state and LATEST."""
    st = _safetensors()
    comm, layout = evo.comm, evo.layout
    folder = os.fspath(folder)
    gen = f"passes-{evo.passes:012d}"
    gen_dir = os.path.join(folder, gen)
    os.makedirs(gen_dir, exist_ok=True)
    meta = {"format": SHARD_FORMAT, "run_id": evo.run_id, "passes": evo.passes, "step": evo.step_count,
            "rank": comm.rank, "world": comm.world, "model": layout.signature()}
    params = evo.archive.params.detach().cpu().contiguous()
    _write_atomic(os.path.join(gen_dir, _shard_name(comm.rank, comm.world)),
                  lambda tmp: st.save_file({"params": params}, tmp, metadata={"m2n2": json.dumps(meta)}))
    comm.barrier()  # every shard is on disk
    if comm.rank == 0:
        state_extra = dict(extra or {})
        state_extra["sharded"] = {"run_id": evo.run_id, "world": comm.world, "model": layout.signature()}
        save_evolution(evo, os.path.join(gen_dir, "state.safetensors"), extra=state_extra, params=False)
        _write_atomic(os.path.join(folder, LATEST), lambda tmp: _write_text(tmp, gen + "\n"))
        for name in os.listdir(folder):  # older generations, and partial ones of a killed run
            if name.startswith("passes-") and name != gen:
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    comm.barrier()  # nobody goes on (or exits) before the checkpoint is complete


def _write_text(path, text):
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def latest_generation(folder):
    """The folder of the last complete generation; FileNotFoundError when there is none."""
    folder = os.fspath(folder)
    try:
        with open(os.path.join(folder, LATEST)) as f:
            gen = f.read().strip()
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {folder} has no {LATEST} file (no complete checkpoint)") from None
    gen_dir = os.path.join(folder, gen)
    if not gen.startswith("passes-") or not os.path.isdir(gen_dir):
        raise ValueError(f"checkpoint {folder}: {LATEST} names {gen!r}, which is not there")
    return gen_dir


def _shard_meta(path):
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {})["m2n2"])
    except Exception as e:
        raise ValueError(f"shard {path} is corrupt or not an m2n2 shard ({e})") from None
    if meta.get("format") != SHARD_FORMAT:
        raise ValueError(f"shard {path} has format {meta.get('format')!r}, expected {SHARD_FORMAT!r}")
    return meta


def load_sharded(evo, folder, *, expect_extra=None):
    """Collective: restore `evo` from the last complete generation of `folder`."""
    from safetensors import safe_open

    comm, layout = evo.comm, evo.layout
    gen_dir = latest_generation(folder)
    state_path = os.path.join(gen_dir, "state.safetensors")
    sharded = read_metadata(state_path)["extra"].get("sharded")
    if not sharded:
        raise ValueError(f"checkpoint {state_path} is not from a sharded run")
    if sharded["model"]["params"] != layout.signature()["params"]:
        raise ValueError(f"checkpoint {folder} holds another model (its parameter shapes differ from this run's)")
    old_world, run_id = int(sharded["world"]), sharded["run_id"]
    extra = load_evolution(evo, state_path, expect_extra=expect_extra, params=False)
    # Every old shard must be there, of this run and of this generation.
    metas = []
    for q in range(old_world):
        path = os.path.join(gen_dir, _shard_name(q, old_world))
        try:
            meta = _shard_meta(path)
        except FileNotFoundError:
            raise ValueError(f"checkpoint {folder} is incomplete: shard {q} of {old_world} ({path}) is missing") from None
        if meta["run_id"] != run_id:
            raise ValueError(f"shard {path} is from another run (run id {meta['run_id']}, the state's is {run_id})")
        if meta["passes"] != evo.passes or meta["world"] != old_world or meta["rank"] != q:
            raise ValueError(f"shard {path} does not match the state (passes {meta['passes']} vs {evo.passes}, "
                             f"rank {meta['rank']} of {meta['world']})")
        metas.append(path)
    params = evo.archive.params
    size, dtype = params.shape[0], params.dtype
    with torch.no_grad():
        for q, path in enumerate(metas):
            old = ShardLayout(layout.params, old_world, q)
            runs = layout.overlaps(old)  # on as many ranks as before: our own file, piece by piece
            if not runs:
                continue
            with safe_open(path, framework="pt") as f:
                stored = f.get_slice("params")
                shape = tuple(stored.get_shape())
                if shape != (size, old.n_local):
                    raise ValueError(f"shard {path} holds params of shape {shape}, expected {(size, old.n_local)}")
                for mine, theirs, count in runs:
                    block = stored[:, theirs : theirs + count]
                    if block.dtype != dtype:
                        raise ValueError(f"shard {path} holds {block.dtype} params, this run has {dtype}")
                    params[:, mine : mine + count].copy_(block)
    evo.run_id = run_id
    comm.barrier()
    evo._check_replicated("after loading the checkpoint")
    return extra
