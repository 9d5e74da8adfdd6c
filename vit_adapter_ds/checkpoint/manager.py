"""The checkpoints of a training run: what a checkpoint holds, when to save, what to keep, what is best, which tag
to resume and loading it (:class:`CheckpointManager`, :func:`find_resume_everywhere`, :func:`load`).

The layout (tag names, the ``COMPLETE`` marker, ``latest``, ``best.json``) is defined once in :mod:`.layout`;
DeepSpeed folders (which tag a path designates, universal conversion) are :mod:`.deepspeed`'s, reading files is
:mod:`.reader`'s. The rules this module keeps:

* **The manager decides.** The trainer calls :meth:`CheckpointManager.step` once per iteration; it saves every
  ``checkpoint_config.interval`` iterations and at the last one, runs the evaluation it is handed, saves and records
  the best tag under ``evaluation.save_best``, and saves before a stop -- never the same iteration twice.

* **A save is all or nothing.** Every rank writes into an empty ``iter_<N>.partial`` folder (its DeepSpeed shards
  and ``extra_rank<r>.pt``: iteration, loader position, RNG states and, on rank 0, every module buffer -- plain
  tensors, ints and strings only); each rank fsyncs its files and reports any error to every rank; rank 0 then
  lists every file with size and CRC-32 in ``COMPLETE`` and renames the folder to ``iter_<N>`` (an older save of
  the same iteration is swapped out, never mixed in), fsyncs the folder and only then prunes.
* **Every save carries its run.** ``COMPLETE`` records ``run_id`` (one id per line of resumed runs: a resumed run
  continues the id of the tag it resumed from), the recipe's name and ``model_fingerprint`` (the model class and
  every state-dict name and shape).
* **Pruning never deletes what a resume needs.** ``max_keep_ckpts`` counts only this run's *intact* tags (verified
  against their file lists); damaged tags, tags of other runs and the best tag of ``save_best`` are never counted
  and never deleted, so the newest intact tag of the run always survives.
* **Resume checks before it loads.** ``--resume auto`` takes the most recently saved complete tag that verifies
  (damaged ones are named and skipped), refuses a tag of another model unless ``--resume-other-recipe``, and passes
  every pickle of the tag (and of a universal conversion) through the safe reader
  (:func:`.reader.read_checkpoint`, ``weights_only=True``) before DeepSpeed, which unpickles
  with ``weights_only=False``, sees it. The decision is taken on rank 0 and broadcast, errors included.
* **Universal conversions belong to one save.** ``iter_<N>_universal/COMPLETE`` records the SHA-256 of the
  ``COMPLETE`` it was converted from; a re-saved ``iter_<N>`` makes it stale and it is converted again.

DeepSpeed's universal load restores parameters and optimizer state but not the module's buffers (BatchNorm
statistics), so :func:`load` always restores every buffer from the saved :class:`TrainState`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import runtime as rt
from . import layout
from .deepspeed import find_tag, raise_everywhere, refuse_unsafe_files, warn
from .layout import BEST, MARKER, TAG_RE, checkpoint_root, complete_tags, file_manifest, tag_name, verify
from .reader import CheckpointError
from .reader import rng_state_from_tensors as set_rng_state
from .reader import rng_state_to_tensors as rng_state


class CheckpointSaveError(RuntimeError):
    """A save failed on some rank (every rank raises it, with every rank's error)."""


class RecipeMismatchError(RuntimeError):
    """``--resume`` found a checkpoint of another model than the one this run builds."""


# ----------------------------------------------------------------------------------------------- the saved state
@dataclass
class TrainState:
    """Everything a checkpoint holds besides DeepSpeed's model/optimizer/scheduler shards, in one place."""

    iteration: int
    loader: dict | None = None
    rng: dict = field(default_factory=rng_state)
    buffers: dict | None = None          # name -> tensor, every module buffer (saved by rank 0)
    rank: int = 0
    world_size: int = 1
    hooks: list | None = None            # the state of each custom hook (engine/ema.py; saved by rank 0)

    def to_dict(self) -> dict:
        return {"iteration": self.iteration, "loader": self.loader, "rng": self.rng, "buffers": self.buffers,
                "rank": self.rank, "world_size": self.world_size, "hooks": self.hooks}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(iteration=int(d["iteration"]), loader=d.get("loader"), rng=d["rng"], buffers=d.get("buffers"),
                   rank=int(d.get("rank", 0)), world_size=int(d.get("world_size", 1)), hooks=d.get("hooks"))


def saved_hook_states(tag_dir: Path) -> list | None:
    """The custom hooks' states of a save (rank 0's extra state; None when it has none)."""
    return torch.load(Path(tag_dir) / layout.extra_state_name(0), map_location="cpu", weights_only=True).get("hooks")


def module_buffers(module: torch.nn.Module) -> dict:
    return {name: buf.detach().cpu().clone() for name, buf in module.named_buffers()}


def restore_buffers(module: torch.nn.Module, buffers: dict) -> None:
    """Copy saved buffers into ``module`` (same names; dtype and device of the module's own buffers)."""
    own = dict(module.named_buffers())
    missing = sorted(set(own) - set(buffers))
    if missing:
        raise RuntimeError(f"checkpoint has no saved value for buffers {missing[:8]}")
    with torch.no_grad():
        for name, buf in own.items():
            saved = buffers[name]
            if tuple(saved.shape) != tuple(buf.shape):
                raise RuntimeError(f"buffer {name}: checkpoint shape {tuple(saved.shape)} != model {tuple(buf.shape)}")
            buf.copy_(saved.to(device=buf.device, dtype=buf.dtype))


# ----------------------------------------------------------------------------------------------- run identity
def model_fingerprint(model: torch.nn.Module) -> str:
    """What makes a checkpoint loadable into ``model``: its class and every state-dict name and shape (hashed)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        h.update(f"\n{name}:{tuple(t.shape)}".encode())
    return h.hexdigest()[:16]


def check_recipe(tag_dir: Path, meta: dict, fingerprint: str | None, recipe: str | None,
                 allow_other: bool = False, report=None) -> None:
    """Refuse (:class:`RecipeMismatchError`, naming both) a tag whose ``model_fingerprint`` differs from this run's,
    unless ``allow_other``. Tags written before fingerprints existed pass."""
    theirs = meta.get("model_fingerprint")
    if fingerprint is None or theirs is None or theirs == fingerprint:
        return
    what = (f"checkpoint {tag_dir} was saved by recipe {meta.get('recipe', '?')!r} (model {theirs}), but this run "
            f"builds recipe {recipe!r} (model {fingerprint})")
    if not allow_other:
        raise RecipeMismatchError(f"--resume: {what}. Use another --work-dir for a new run, or pass "
                                  "--resume-other-recipe to load it anyway")
    (report or warn)(f"{what}; resuming it anyway (--resume-other-recipe)")


# ----------------------------------------------------------------------------------------------- finding
def find_resume(resume: str | None, work_dir, report=warn) -> tuple[Path, dict] | None:
    """Resolve ``--resume``: ``auto`` -> the most recently saved complete and intact (:func:`.layout.verify`) tag
    in ``work_dir`` (None if there is none; damaged tags are reported through ``report`` and skipped); a path -> the
    complete tag it designates (:func:`.deepspeed.find_tag` with ``complete_only``: a tag folder that must be
    intact, or the newest complete and intact tag of a ``checkpoints`` or work folder).

    Reads the file system: call it on one rank and broadcast (:func:`find_resume_everywhere`)."""
    if not resume:
        return None
    if resume == "auto":
        return layout.newest_intact(checkpoint_root(work_dir), report, "--resume auto")
    return find_tag(resume, report, complete_only=True, label=f"--resume {resume}")


def find_resume_everywhere(resume: str | None, work_dir, *, fingerprint: str | None = None,
                           recipe: str | None = None, allow_other_recipe: bool = False) -> tuple[Path, dict] | None:
    """:func:`find_resume`, the recipe check and the safe-file check decided by rank 0 and broadcast, so every rank
    loads the same tag or raises the same error (any exception on rank 0 reaches every rank: none is left waiting
    for the distributed timeout)."""
    result = None
    if rt.is_main():
        try:
            found = find_resume(resume, work_dir)
            if found is not None:
                check_recipe(found[0], found[1], fingerprint, recipe, allow_other_recipe)
                refuse_unsafe_files(found[0])
            result = ("ok", found)
        except Exception as e:  # noqa: BLE001 - every failure must reach the other ranks
            result = ("error", (type(e).__name__, str(e)))
    if rt.world_size() > 1:
        result = rt.broadcast_object(result)
    kind, value = result
    if kind == "error":
        raise_everywhere(value, (RecipeMismatchError,))
    return value


# ----------------------------------------------------------------------------------------------- saving / keeping
@dataclass
class StepResult:
    """What :meth:`CheckpointManager.step` did: the tag it saved (None: none), the evaluation's metrics (None: no
    evaluation) and whether they were the best so far."""

    saved: Path | None = None
    metrics: dict | None = None
    best: bool = False


class CheckpointManager:
    """Saves, keeps and finds the checkpoints of one run in a work dir, and decides when to save and what is best.

    ``keep_last``: -1 or None keeps all (mmcv's ``max_keep_ckpts``; the tag of the best evaluation under
    ``save_best`` is never pruned). ``meta`` is recorded in every ``COMPLETE`` (precision, ZeRO stage, recipe, model
    fingerprint); ``run_id`` identifies this run (a new one unless :meth:`continue_run` adopts the id of the tag a
    resume loads). For :meth:`step`: ``interval`` (save every so many iterations; default: at ``max_iters`` only),
    ``max_iters`` (always saved), ``best_metric`` / ``best_rule`` (``evaluation.save_best``: None keeps no best)
    and ``log`` (a callable taking one line)."""

    def __init__(self, work_dir, keep_last: int | None = None, meta: dict | None = None, run_id: str | None = None,
                 *, interval: int | None = None, max_iters: int | None = None, best_metric: str | None = None,
                 best_rule: str = "greater", log=None):
        self.root = checkpoint_root(work_dir)
        self.keep_last = None if keep_last in (None, -1) else max(1, int(keep_last))
        self.meta = dict(meta or {})
        self.run_id = run_id or uuid.uuid4().hex
        self.interval = int(interval) if interval else None
        self.max_iters = None if max_iters is None else int(max_iters)
        self.best_metric, self.best_rule = best_metric or None, best_rule
        self.log = log or (lambda msg: None)
        self.last_saved = -1  # the iteration of the newest complete tag of this run (resumed: the loaded one)
        self._verified: dict[str, tuple] = {}  # tag -> file signature when last found intact

    def continue_run(self, meta: dict) -> None:
        """Adopt the run id of the tag this run resumes from, so its tags are this run's to keep and prune."""
        if meta.get("run_id"):
            self.run_id = str(meta["run_id"])

    # -- the once-per-iteration decision
    def due(self, iteration: int) -> bool:
        """A periodic save is due after ``iteration``: every ``interval`` iterations and at ``max_iters``."""
        return bool((self.interval and iteration % self.interval == 0)
                    or (self.max_iters is not None and iteration == self.max_iters))

    def step(self, iteration: int, engine, train_state, *, evaluate=None, stop: bool = False,
             periodic: bool = True) -> StepResult:
        """Everything checkpoints need after ``iteration`` (call on every rank, once per iteration), in this order:

        1. a periodic save when :meth:`due` (``periodic=False``: not considered, e.g. the evaluation of a run that
           is already finished);
        2. ``evaluate(iteration) -> metrics`` when given; under ``best_metric`` a better value (decided on rank 0,
           :meth:`is_better`) saves this iteration unless it is saved already, then records it in ``best.json``
           (which so only ever names a complete tag);
        3. ``stop``: this iteration is saved before the run stops.

        ``train_state(iteration) -> TrainState`` builds what a save holds (called only when saving). No iteration is
        saved twice."""
        result = StepResult()

        def save():
            if self.last_saved != iteration:
                result.saved = self.save(engine, train_state(iteration))
                self.log(f"saved checkpoint {result.saved}")

        if periodic and self.due(iteration):
            save()
        if evaluate is not None:
            result.metrics = evaluate(iteration)
            if self.best_metric:
                if self.best_metric not in result.metrics:
                    raise KeyError(f"evaluation.save_best={self.best_metric!r}: the evaluation gives "
                                   f"{sorted(result.metrics)}")
                value = float(result.metrics[self.best_metric])
                if self.is_better(self.best_metric, value, self.best_rule):  # every rank saves or none does
                    result.best = True
                    self.log(f"best {self.best_metric} {value:.4f} at iteration {iteration}")
                    save()
                    self.record_best(self.best_metric, value, iteration)
        if stop:
            save()
        return result

    # -- save
    def save(self, engine, state: TrainState) -> Path:
        """Save a DeepSpeed checkpoint ``iter_<iteration>`` plus every rank's :class:`TrainState` into an empty
        folder; mark it complete and move it into place only after every rank has written and fsynced its files.
        Call on every rank."""
        tag = tag_name(state.iteration)
        partial = self.root / (tag + layout.PARTIAL_SUFFIX)
        if rt.is_main():
            self.recover()
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(partial, ignore_errors=True)  # a save interrupted earlier: never mixed into this one
            partial.mkdir()
        rt.barrier()
        engine.save_checkpoint(str(self.root), tag=partial.name, client_state={"iteration": state.iteration},
                               save_latest=False)
        error = None
        try:
            own = partial / layout.extra_state_name(state.rank)
            torch.save(state.to_dict(), own)
            for p in sorted(partial.rglob("*")):  # this rank's files are on disk before anyone marks the tag
                if p.is_file():
                    layout.fsync_path(p)
        except OSError as e:
            error = f"rank {rt.rank()}: {type(e).__name__}: {e}"
        errors = [e for e in rt.all_gather_object(error) if e]
        if errors:
            raise CheckpointSaveError(f"saving {tag} failed (the previous checkpoints are untouched; {partial} "
                                      "is incomplete): " + "; ".join(errors))
        final = self.root / tag
        if rt.is_main():
            layout.fsync_tree(partial)
            files = file_manifest(partial)
            info = dict(self.meta, run_id=self.run_id, iteration=state.iteration, world_size=state.world_size,
                        time=time.time(), files=files)
            layout.atomic_write_text(partial / MARKER, json.dumps(info, indent=1))
            self._move_into_place(partial, final)
            layout.atomic_write_text(self.root / layout.LATEST, tag)
            self._verified[tag] = _signature(final, files)
            self.prune()
        rt.barrier()
        self.last_saved = state.iteration
        return final

    def _move_into_place(self, partial: Path, final: Path) -> None:
        """``partial`` becomes ``final``; an existing ``final`` (an older save of the same iteration) is first
        renamed aside, then removed with its universal conversion, so no file of it can mix into the new save."""
        replaced = final.with_name(final.name + layout.REPLACED_SUFFIX)
        shutil.rmtree(replaced, ignore_errors=True)
        if final.exists() or final.is_symlink():
            old = layout.read_marker(final)
            if old is not None and old.get("run_id") != self.run_id:
                warn(f"{final} of another run (saved {time.ctime(float(old.get('time', 0)))}) is replaced by "
                           f"this run's save of the same iteration")
            os.rename(final, replaced)
        os.rename(partial, final)
        layout.fsync_path(self.root)
        shutil.rmtree(replaced, ignore_errors=True)
        shutil.rmtree(final.with_name(final.name + layout.UNIVERSAL_SUFFIX), ignore_errors=True)

    def recover(self) -> None:
        """Undo a swap cut short by a crash: an ``iter_<N>.replaced`` without ``iter_<N>`` goes back (rank 0)."""
        if not self.root.is_dir():
            return
        for d in self.root.glob(layout.TAG_GLOB + layout.REPLACED_SUFFIX):
            final = d.with_name(d.name[: -len(layout.REPLACED_SUFFIX)])
            if TAG_RE.match(final.name) and not final.exists():
                os.rename(d, final)

    # -- best
    def best(self) -> dict | None:
        try:
            rec = json.loads((self.root / BEST).read_text())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) else None

    def is_better(self, metric: str, value: float, rule: str = "greater") -> bool:
        """Whether ``value`` of ``metric`` beats the recorded best; decided on rank 0 and broadcast (every rank
        gets the same answer, so they all take part in the save that follows). A non-finite value is never best;
        a non-finite recorded best is beaten by any finite value."""
        better = False
        if rt.is_main():
            old = self.best()
            if math.isfinite(value):
                old_value = (old or {}).get("value")
                better = (old is None or old.get("metric") != metric or not isinstance(old_value, (int, float))
                          or not math.isfinite(old_value)
                          or (value > old_value if rule == "greater" else value < old_value))
        return bool(rt.broadcast_object(better))

    def record_best(self, metric: str, value: float, iteration: int) -> None:
        """Write ``best.json`` (rank 0) -- call after the tag of ``iteration`` is complete, so it never names a save
        that did not finish."""
        if rt.is_main():
            self.root.mkdir(parents=True, exist_ok=True)
            layout.atomic_write_text(self.root / BEST, json.dumps(
                {"metric": metric, "value": value, "iteration": iteration, "tag": tag_name(iteration),
                 "run_id": self.run_id}, indent=1))

    def update_best(self, metric: str, value: float, iteration: int, rule: str = "greater") -> bool:
        """:meth:`is_better` then :meth:`record_best` (for a caller whose tag of ``iteration`` is complete)."""
        better = self.is_better(metric, value, rule)
        if better:
            self.record_best(metric, value, iteration)
        return better

    # -- keeping
    def _is_intact(self, tag: str, meta: dict) -> bool:
        files = meta.get("files")
        if not isinstance(files, dict):
            return True  # markers without file lists (older saves) cannot be checked
        sig = _signature(self.root / tag, files)
        if self._verified.get(tag) == sig:
            return True
        ok = not verify(self.root / tag, meta)
        if ok:
            self._verified[tag] = sig
        return ok

    def prune(self) -> None:
        """Keep this run's newest ``keep_last`` intact tags (and the best one); remove its older intact tags and the
        leftovers of interrupted saves. Tags of other runs and damaged tags are never counted nor removed, so the
        newest intact tag of this run -- and until one exists, the tag it resumed from -- always survives."""
        if not self.root.is_dir():
            return
        for d in self.root.glob(layout.TAG_GLOB + layout.PARTIAL_SUFFIX):
            shutil.rmtree(d, ignore_errors=True)
        if self.keep_last is None:
            return
        own = [(tag, meta) for _, tag, meta in complete_tags(self.root) if meta.get("run_id") == self.run_id]
        intact = [tag for tag, meta in own if self._is_intact(tag, meta)]
        best = (self.best() or {}).get("tag")
        for tag in intact[: -self.keep_last]:
            if tag != best:
                shutil.rmtree(self.root / (tag + layout.UNIVERSAL_SUFFIX), ignore_errors=True)
                shutil.rmtree(self.root / tag, ignore_errors=True)
                self._verified.pop(tag, None)


def _signature(tag_dir: Path, files: dict) -> tuple:
    """Sizes and modification times of a save's files: unchanged since a verification means still intact."""
    out = []
    for name in sorted(files):
        try:
            st = (Path(tag_dir) / name).lstat()
            out.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            out.append((name, None))
    return tuple(out)


# ----------------------------------------------------------------------------------------------- loading
def read_train_state(tag_dir: Path, rank: int, world_size: int | None = None) -> tuple[TrainState, dict | None]:
    """This rank's :class:`TrainState` (rank 0's on another world size) and rank 0's saved buffers. On the world
    size the tag was saved with (its marker's ``world_size``), this rank's own file must exist."""
    saved_world = int((layout.read_marker(tag_dir) or {}).get("world_size", -1))
    same_world = world_size is None or saved_world in (-1, world_size)
    own = tag_dir / layout.extra_state_name(rank)
    if same_world and saved_world != -1 and rank < saved_world and not own.is_file():
        raise CheckpointError(f"{own} is missing: the save of {saved_world} ranks is incomplete")
    path = own if own.is_file() else tag_dir / layout.extra_state_name(0)
    state = TrainState.from_dict(torch.load(path, map_location="cpu", weights_only=True))
    buffers = state.buffers
    if buffers is None:
        buffers = torch.load(tag_dir / layout.extra_state_name(0), map_location="cpu", weights_only=True).get("buffers")
    return state, buffers


def load(engine, tag_dir: Path) -> TrainState:
    """Load model, optimizer and scheduler (DeepSpeed), then this rank's RNG states and every module buffer;
    return the :class:`TrainState` (iteration, loader position)."""
    load_path, _ = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {tag_dir}")
    state, buffers = read_train_state(tag_dir, rt.rank(), rt.world_size())
    if buffers is not None:
        restore_buffers(engine.module, buffers)
    set_rng_state(state.rng)
    return state
