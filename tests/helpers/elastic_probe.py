"""Resume a work dir with the real engine, evaluate at once, and dump what the resumed model holds.

    torchrun --nproc_per_node N tests/helpers/elastic_probe.py <launch/train.py arguments> --probe-out FILE

Rank 0 writes ``{'iteration', 'metrics', 'state_dict'}`` (every tensor of the module's state dict, buffers included,
gathered under ZeRO-3) to FILE. Used by ``test_engine_elastic.py``; no tests live here.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository


def main(argv) -> int:
    import torch

    from vit_adapter_ds import runtime as rt
    from vit_adapter_ds.engine.cli import build_parser, prepare
    from vit_adapter_ds.engine.deepspeed_setup import zero_stage
    from vit_adapter_ds.engine.trainer import Trainer

    out = argv[argv.index("--probe-out") + 1]
    argv = [a for i, a in enumerate(argv) if a != "--probe-out" and (i == 0 or argv[i - 1] != "--probe-out")]
    args = build_parser().parse_args(argv)
    env = rt.setup_env()
    task, ds, work_dir, resume, _ = prepare(args, int(env["WORLD_SIZE"]))
    rt.init_distributed(timeout_s=120)
    trainer = Trainer(task, ds, work_dir, resume=resume, progress=False).build()
    metrics = trainer.evaluate(trainer.start_iter)
    module = trainer.engine.module
    if zero_stage(ds) == 3:
        import deepspeed
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    else:
        state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    if rt.is_main():
        torch.save({"iteration": trainer.start_iter, "metrics": metrics, "state_dict": state}, out)
    rt.barrier()
    rt.close_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
