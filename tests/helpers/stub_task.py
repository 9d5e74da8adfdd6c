"""A stand-in task for the engine tests (a tiny conv segmentor, a resumable in-memory loader) and a script entry
point: ``deepspeed --num_gpus 2 tests/helpers/stub_task.py <launch/train.py arguments>`` trains it with the real
engine (the Trainer only sees the task interface of ``vit_adapter_ds.tasks.base``). No tests live here;
``test_engine_*.py`` files run this script.

The loader's batch ``n`` on rank ``r`` is a pure function of ``(seed, r, n)``, so its state is just ``n``; the model
uses dropout, so resuming is bitwise only if the engine restores the torch RNG state too.

Fault-injection hooks (environment variables of the script): ``STUB_CRASH_AT_ITER`` / ``STUB_CRASH_RANK`` /
``STUB_CRASH_FILE`` (SIGKILL a rank once an iteration is logged), ``STUB_KILL_IN_SAVE=<tag>:<rank>:<name part>`` (that
rank writes half of that checkpoint file, then SIGKILLs itself), ``STUB_NAN_AT_BATCH=i,j`` / ``STUB_NAN_RANK`` /
``STUB_NAN_OFFSET`` (NaN loss at those micro-batch numbers of one rank), ``STUB_INF_GRAD_AT_BATCH=i,j`` (same rank and
numbering: finite losses, an Inf gradient into ``loss_aux``), ``STUB_STEP_SLEEP`` (seconds added to every
micro-batch), ``STUB_SIGNAL_IN_SAVE=<signal number>`` (once a stop signal arrived, each rank signals itself again
while it writes its checkpoint state), ``STUB_SAVE_SLEEP`` (every checkpoint file is written half, then this many
seconds later the rest: a save long enough to be killed in), ``STUB_EVAL_SLEEP`` (seconds added to every validation
batch), ``STUB_PHASE_LOG=<file>`` (each rank appends ``<rank> step|save|eval|eval-end <n> <time>`` lines: the start of
micro-batch ``n``, of a file of checkpoint ``iter_<n>``, of the evaluation after iteration ``n`` and its end, so a
test knows what a kill interrupted), ``STUB_BLOCK_AT=<phase>:<n>[:<rank>[:<k>]]`` (``phase`` step|save|eval: that
rank -- every rank without one -- stops for good at micro-batch ``n`` / in the ``k``-th file of checkpoint
``iter_<n>``, written half / before the ``k``-th validation batch of the evaluation after iteration ``n``; it first
appends ``<rank> blocked-<phase> <n> <time>`` to ``STUB_PHASE_LOG``, then sleeps until it is killed, so a test kills
it mid-phase without any timing; ``STUB_BLOCK_MAX`` seconds, default 600, later it exits with status 86 by itself).
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

if __name__ == "__main__":  # run as a script: the repository's package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from vit_adapter_ds.tasks.base import Task  # noqa: E402

NUM_CLASSES = 4


def phase(what, n):
    """One ``STUB_PHASE_LOG`` line (a single O_APPEND write: lines of several ranks do not interleave)."""
    path = os.environ.get("STUB_PHASE_LOG")
    if path:
        import time
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{os.environ.get('RANK', '0')} {what} {n} {time.time():.3f}\n".encode())
        os.close(fd)


_BLOCK_SEEN: dict = {}  # (phase, n) -> how many times this rank has been there (files of a save, val batches)
_EVAL_AT = [0]  # the iteration of the evaluation in progress (for the block point inside stub_evaluate)


def block_point(what, n):
    """``STUB_BLOCK_AT``: stop here for good when this is the named point (see the module docstring)."""
    spec = os.environ.get("STUB_BLOCK_AT")
    if not spec:
        return
    k = _BLOCK_SEEN.get((what, str(n)), 0)
    _BLOCK_SEEN[(what, str(n))] = k + 1
    want = spec.split(":")
    rank = os.environ.get("RANK", "0")
    if (want[:2] != [what, str(n)] or (len(want) > 2 and want[2] != rank)
            or k != (int(want[3]) if len(want) > 3 else 0)):
        return
    import time
    phase(f"blocked-{what}", n)
    t_end = time.time() + float(os.environ.get("STUB_BLOCK_MAX") or 600)
    while time.time() < t_end:  # (signal handlers run in between; only SIGKILL or a fatal signal ends this)
        time.sleep(0.5)
    os._exit(86)


class TinySeg(nn.Module):
    """conv-BN-ReLU-dropout-conv; loss dict like the real EncoderDecoder (decode + auxiliary term)."""

    def __init__(self, num_classes=NUM_CLASSES, width=8, dropout=0.1):
        super().__init__()
        from vit_adapter_ds.models.norm import norm_class
        self.backbone = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), norm_class("bn")(width), nn.ReLU())
        self.decode_head = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(width, num_classes, 1))
        self.auxiliary_head = nn.Conv2d(width, num_classes, 1)

    def forward(self, img, gt_semantic_seg=None):
        feat = self.backbone(img)
        logits = self.decode_head(feat)
        if gt_semantic_seg is None:
            return logits
        gt = gt_semantic_seg.long()
        if gt.dim() == 4:
            gt = gt[:, 0]
        loss_ce = F.cross_entropy(logits.float(), gt, ignore_index=255)
        loss_aux = 0.4 * F.cross_entropy(self.auxiliary_head(feat).float(), gt, ignore_index=255)
        return {"loss_ce": loss_ce, "loss_aux": loss_aux, "loss": loss_ce + loss_aux}

    def predict(self, img):
        return self.forward(img).argmax(1)


def make_sample(seed, index, size=16):
    g = torch.Generator().manual_seed(seed * 1000003 + index)
    img = torch.randn(3, size, size, generator=g)
    gt = (img[0] > 0).long() + 2 * (img[1] > 0.5).long()
    return img, gt


def make_batch(seed, first, batch_size):
    imgs, gts = zip(*(make_sample(seed, first + i) for i in range(batch_size)))
    return {"img": torch.stack(imgs), "gt_semantic_seg": torch.stack(gts)}


class StubLoader:
    """Global sample stream: micro-batch ``n`` of rank ``r`` holds samples ``(n * world + r) * bs ...``; the state is
    the number of samples consumed by all ranks, so it carries over to another world size."""

    def __init__(self, seed, rank, world_size, batch_size):
        self.seed, self.rank, self.world, self.batch_size, self.pos = seed, rank, world_size, batch_size, 0

    def __iter__(self):
        return self

    def __next__(self):
        b = make_batch(self.seed, (self.pos * self.world + self.rank) * self.batch_size, self.batch_size)
        self.pos += 1
        return b

    def state_dict(self):
        return {"samples": self.pos * self.world * self.batch_size}

    def load_state_dict(self, state):
        self.pos = int(state["samples"]) // (self.world * self.batch_size)


class StubVal:
    def __init__(self, rank):  # unequal per-rank counts, like the real val loader
        self.batches = [make_batch(12345, (2 * i + rank) * 2, 2) for i in range(2 + rank)]

    def __iter__(self):
        return iter(self.batches)


def stub_evaluate(model, val_loader, cfg, dtype, num_vis):
    import torch.distributed as dist
    correct = torch.zeros(2, dtype=torch.float64)
    for b in val_loader:
        block_point("eval", _EVAL_AT[0])
        if os.environ.get("STUB_EVAL_SLEEP"):  # slow evaluation down so a test can kill a rank mid-evaluation
            import time
            time.sleep(float(os.environ["STUB_EVAL_SLEEP"]))
        pred = model.predict(b["img"].to(dtype))
        correct[0] += (pred == b["gt_semantic_seg"]).sum()
        correct[1] += pred.numel()
    if dist.is_initialized():
        dist.all_reduce(correct)
    dump = os.environ.get("STUB_DUMP_OUTPUT")
    if dump:  # live-model logits on fixed inputs (forward on every rank, saved by rank 0)
        out = model(make_batch(777, 0, 2)["img"].to(dtype)).float()
        if not dist.is_initialized() or dist.get_rank() == 0:
            torch.save(out, dump)
    vis = []
    if num_vis:
        from vit_adapter_ds.utils.vis import triptych
        img = (b["img"][0].float().permute(1, 2, 0).clamp(-2, 2) * 60 + 128).byte().numpy()
        vis.append(triptych(img, b["gt_semantic_seg"][0].numpy(), pred[0].numpy(), NUM_CLASSES))
    return {"aAcc": float(correct[0] / correct[1])}, vis


class StubTask(Task):
    name = "stub"
    best_metric = "aAcc"

    def validate(self):
        pass

    def build_model(self, load_pretrained=True):
        return TinySeg(dropout=self.cfg.model.decode_head.dropout_ratio)

    def build_train_loader(self, rank, world_size, seed):
        self._train_loader = StubLoader(seed, rank, world_size, self.cfg.data.samples_per_gpu)
        return self._train_loader

    def build_val_loader(self, rank, world_size):
        return StubVal(rank)

    def forward_loss(self, model, batch, device, dtype):
        phase("step", self._train_loader.pos)
        block_point("step", self._train_loader.pos)
        losses = model(batch["img"].to(device, dtype), batch["gt_semantic_seg"].to(device))
        if os.environ.get("STUB_STEP_SLEEP"):  # slow iterations down so a test can signal mid-run
            import time
            time.sleep(float(os.environ["STUB_STEP_SLEEP"]))
        nan_at = os.environ.get("STUB_NAN_AT_BATCH")  # fault injection: NaN loss_ce at these micro-batch numbers
        inf_grad_at = os.environ.get("STUB_INF_GRAD_AT_BATCH")  # ... finite losses, Inf gradient of loss_aux
        if nan_at or inf_grad_at:
            # every rank and every micro-batch builds the same graph (a factor 1 or NaN / Inf), as a real numerical
            # fault does: ZeRO-3 checks that all ranks run the module backwards in the same order
            self._micro = getattr(self, "_micro", -1) + 1
            start = int(os.environ.get("STUB_NAN_OFFSET", "0"))  # micro-batches before this process (resumed run)
            here = os.environ.get("RANK", "0") == os.environ.get("STUB_NAN_RANK", "1")

            def bad(at):
                return here and self._micro + start in {int(i) for i in (at or "").split(",") if i}
            losses["loss_ce"] = losses["loss_ce"] * (float("nan") if bad(nan_at) else 1.0)
            losses["loss"] = losses["loss_ce"] + losses["loss_aux"]
            grad_factor = float("inf") if bad(inf_grad_at) else 1.0
            losses["loss_aux"].register_hook(lambda g: g * grad_factor)
        return losses

    def param_groups(self, model):
        decay = [p for n, p in model.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
        return [{"params": decay, "lr_scale": 1.0, "group_name": "decay"},
                {"params": no_decay, "lr_scale": 0.5, "weight_decay": 0.0, "group_name": "no_decay"}]

    def evaluate(self, model, val_loader, dtype, num_vis):
        phase("eval", self._train_loader.pos)
        _EVAL_AT[0] = self._train_loader.pos
        out = stub_evaluate(model, val_loader, self.cfg, dtype, num_vis)
        phase("eval-end", self._train_loader.pos)
        return out


if __name__ == "__main__":
    from vit_adapter_ds.engine.cli import main
    crash_at = os.environ.get("STUB_CRASH_AT_ITER")
    if crash_at:  # simulate a hard crash (SIGKILL of this rank) once the given iteration's line is logged
        import signal
        import threading
        import time

        def _watch(path, it):
            if os.environ.get("RANK") != os.environ.get("STUB_CRASH_RANK", "1"):
                return
            while True:
                try:
                    with open(path) as f:
                        if any(f'"iter": {it},' in line for line in f):
                            os.kill(os.getpid(), signal.SIGKILL)
                except FileNotFoundError:
                    pass
                time.sleep(0.01)
        threading.Thread(target=_watch, args=(os.environ["STUB_CRASH_FILE"], int(crash_at)), daemon=True).start()
    kill_in_save = os.environ.get("STUB_KILL_IN_SAVE")
    if kill_in_save:  # "<tag>:<rank>:<file name part>": write half of that file of that save, then SIGKILL this rank
        tag, kill_rank, part = kill_in_save.split(":")
    signal_in_save = os.environ.get("STUB_SIGNAL_IN_SAVE")  # "<signal number>": sent again in the stop's save
    save_sleep = float(os.environ.get("STUB_SAVE_SLEEP") or 0)
    block_at = os.environ.get("STUB_BLOCK_AT", "")
    if kill_in_save or signal_in_save or save_sleep or os.environ.get("STUB_PHASE_LOG") or block_at:
        import io
        import re
        import signal
        import time

        real_save = torch.save

        def _save(obj, f, *args, **kwargs):
            name = os.fspath(f) if isinstance(f, (str, os.PathLike)) else ""
            stopping = getattr(getattr(signal.getsignal(signal.SIGUSR1), "__self__", None), "signum", 0)
            if signal_in_save and stopping and "extra_rank" in name:  # the Trainer's stop handler has fired
                os.kill(os.getpid(), int(signal_in_save))
            if (kill_in_save and os.environ.get("RANK") == kill_rank
                    and re.search(rf"/{re.escape(tag)}(?:\.partial)?/", name) and part in os.path.basename(name)):
                buf = io.BytesIO()
                real_save(obj, buf, *args, **kwargs)
                with open(name, "wb") as out:
                    out.write(buf.getvalue()[:len(buf.getvalue()) // 2])
                    out.flush()
                    os.fsync(out.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            tag_of = re.search(r"/iter_(\d+)(?:\.partial)?/", name)  # a save writes into iter_<n>.partial/
            if tag_of:
                phase("save", tag_of.group(1))
            if tag_of and block_at.split(":")[:2] == ["save", tag_of.group(1)]:
                buf = io.BytesIO()  # half the file on disk, then (at the named file) stop for good
                real_save(obj, buf, *args, **kwargs)
                with open(name, "wb") as out:
                    out.write(buf.getvalue()[:len(buf.getvalue()) // 2])
                    out.flush()
                    os.fsync(out.fileno())
                block_point("save", tag_of.group(1))
                with open(name, "ab") as out:  # not the named file: the rest
                    out.write(buf.getvalue()[len(buf.getvalue()) // 2:])
                return None
            if tag_of and save_sleep:  # half the file, a pause, the rest
                buf = io.BytesIO()
                real_save(obj, buf, *args, **kwargs)
                data = buf.getvalue()
                with open(name, "wb") as out:
                    out.write(data[:len(data) // 2])
                    out.flush()
                    time.sleep(save_sleep)
                    out.write(data[len(data) // 2:])
                return None
            return real_save(obj, f, *args, **kwargs)
        torch.save = _save
    sys.exit(main(sys.argv[1:], make_task=StubTask))
