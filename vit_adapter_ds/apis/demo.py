"""``launch/demo.py``: run a trained model on one image, a folder of images or a video file, writing pictures and
machine-readable results; or serve a local page to try models in a browser (``--web``).

    python launch/demo.py --config RECIPE --checkpoint CKPT --input photo.jpg --out demo/
    python launch/demo.py --config RECIPE --checkpoint CKPT --input photos/ --out demo/ [--recursive]
    python launch/demo.py --config RECIPE --checkpoint CKPT --input clip.mp4 --out demo/
    python launch/demo.py --config RECIPE --checkpoint CKPT --web [--port 7860] [--add-model RECIPE2 CKPT2 ...]

What is written for an image ``<stem>`` (the task's image predictor, the same files as ``launch/predict.py``):

* segmentation: ``<stem>.png``, an indexed PNG whose values are the class ids, and ``<stem>_overlay.png``;
* detection: ``<stem>.png`` with boxes, names, scores and masks drawn, and ``<stem>.json`` (COCO-style ``bbox`` /
  ``score`` / ``category_id`` / ``segmentation`` RLE of the detections at or above ``--score-thr``);
* panoptic: ``<stem>.png`` with the segments drawn, ``<stem>_panoptic.png`` + ``<stem>.json`` (COCO panoptic format).

A folder run shows a progress bar, keeps sub-folders with ``--recursive`` (their layout is kept under ``--out``),
and is resumable: an image whose files all exist is skipped (each file is written aside and renamed, so a killed
run leaves none half-written). An unreadable image is skipped and listed at the end and in ``<out>/skipped.json``
(the run goes on; the exit status stays 0). A video (``.mp4``, ``.avi``, ``.mov``, ``.mkv``, ``.webm``, ``.m4v``)
is read frame by frame (OpenCV) and gives ``<stem>_demo.mp4`` (the drawn frames at the video's frame rate), plus
``<stem>_frames.jsonl`` (detection / panoptic: one line per frame) or ``<stem>_labels/<frame>.png`` (segmentation
label maps). Errors in the flags, recipe, checkpoint or a single given file end with one ``error:`` line, status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def _progress(iterable, total, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True)


def output_stems(paths, roots) -> dict:
    """``{path: stem}``: each image's name without its suffix, relative to the folder it was found in (sub-folders
    kept); two images that would share a stem (``a.png``, ``a.jpg``) get their suffix in it (``a_png``, ``a_jpg``)."""
    stems = {}
    for p in paths:
        root = next((r for r in roots if r in p.parents), None)
        rel = p.relative_to(root) if root is not None else Path(p.name)
        stems[p] = rel.with_suffix("")
    counts = {}
    for s in stems.values():
        counts[s] = counts.get(s, 0) + 1
    return {p: str(s if counts[s] == 1 else s.with_name(f"{s.name}_{p.suffix.lstrip('.').lower()}"))
            for p, s in stems.items()}


def run_images(predictor, paths, out_dir, *, roots=(), progress: bool = True, overwrite: bool = False,
               must_read=()) -> dict:
    """Predict and write every image of ``paths`` (see the module docstring); returns ``{'written', 'skipped_done',
    'unreadable': [{'file', 'reason'}]}``. An unreadable image of ``must_read`` (files named on the command line)
    raises :class:`~vit_adapter_ds.data.user_images.ImageError` instead of being skipped."""
    from ..data.user_images import ImageError, load_rgb

    out_dir = Path(out_dir)
    stems = output_stems([Path(p) for p in paths], [Path(r) for r in roots])
    must_read = {Path(p) for p in must_read}
    writer = predictor.image_predictor
    done, written, unreadable = 0, 0, []
    for path in _progress(list(stems), len(stems), progress, "images"):
        stem = stems[path]
        if not overwrite and all(p.exists() for p in writer.outputs(out_dir, stem)):
            done += 1
            continue
        try:
            rgb = load_rgb(path)
        except ImageError as e:
            if path in must_read:
                raise
            unreadable.append({"file": str(path), "reason": str(e)})
            continue
        result = predictor.predict_one(rgb)
        writer.write(out_dir, stem, rgb, result, source=path)
        written += 1
    return {"written": written, "skipped_done": done, "unreadable": unreadable}


def run_video(predictor, path, out_dir, *, progress: bool = True, fps: float | None = None,
              overwrite: bool = False) -> dict:
    """Predict every frame of the video ``path``; writes ``<stem>_demo.mp4`` and the per-frame results (see the
    module docstring). Returns ``{'frames', 'video', 'results'}``."""
    import cv2
    import numpy as np

    from ..evaluation.visualize import save_mask_png
    from ..utils.files import written_aside
    from ..data.user_images import ImageError
    from ..tasks.results import DetectionResult, PanopticResult, SegmentationResult

    path, out_dir = Path(path), Path(out_dir)
    video = out_dir / f"{path.stem}_demo.mp4"
    if video.exists() and not overwrite:
        return {"frames": 0, "video": str(video), "results": None, "skipped_done": True}
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ImageError(f"{path}: not a readable video (OpenCV cannot open it)")
    rate = fps or cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = predictor.image_predictor
    labels_dir = out_dir / f"{path.stem}_labels"
    lines_path = out_dir / f"{path.stem}_frames.jsonl"
    out_dir.mkdir(parents=True, exist_ok=True)
    frames, sink, lines = 0, None, []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="frames", unit="frame", file=sys.stderr, dynamic_ncols=True)
    try:
        with written_aside(video) as tmp:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                rgb = np.ascontiguousarray(bgr[:, :, ::-1])
                result = predictor.predict_one(rgb)
                picture = writer.draw(rgb, result)
                if sink is None:
                    h, w = picture.shape[:2]
                    sink = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(rate), (w, h))
                    if not sink.isOpened():
                        raise RuntimeError(f"OpenCV cannot write {video} (mp4v)")
                sink.write(np.ascontiguousarray(picture[:, :, ::-1]))
                if isinstance(result, SegmentationResult):
                    save_mask_png(labels_dir / f"{frames:06d}.png", result.label_map, len(writer.classes),
                                  getattr(writer, "palette", None))
                elif isinstance(result, DetectionResult):
                    lines.append({"frame": frames, "detections": writer.to_json(result)})
                elif isinstance(result, PanopticResult):
                    lines.append({"frame": frames, "segments_info": result.segments})
                frames += 1
                if bar is not None:
                    bar.update(1)
            if sink is not None:
                sink.release()
                sink = None
            if frames == 0:
                raise ImageError(f"{path}: no frame could be read")
    finally:
        if sink is not None:
            sink.release()
        if bar is not None:
            bar.close()
        cap.release()
    if lines:
        from ..utils.files import write_text_aside

        write_text_aside(lines_path, "".join(json.dumps(x) + "\n" for x in lines))
    return {"frames": frames, "video": str(video),
            "results": str(lines_path) if lines else str(labels_dir) if labels_dir.exists() else None}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch/demo.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="recipe name or .py file (default: the synthetic quickstart)")
    p.add_argument("--checkpoint", default=None,
                   help="run folder, DeepSpeed tag, export or released .pth (required unless --random-weights)")
    p.add_argument("--random-weights", action="store_true", help="no checkpoint: the recipe's untrained model")
    p.add_argument("--input", nargs="+", default=None, help="image file(s), folder(s) or a video file")
    p.add_argument("--out", default=None, help="output folder (required with --input)")
    p.add_argument("--recursive", action="store_true", help="folders: also their sub-folders")
    p.add_argument("--overwrite", action="store_true", help="redo images / videos whose outputs exist")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: a GPU if any)")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="override recipe values")
    p.add_argument("--score-thr", type=float, default=None, help="detection: draw detections scoring at least this")
    p.add_argument("--fps", type=float, default=None, help="video: frame rate of the output (default: the input's)")
    p.add_argument("--no-progress", action="store_true")
    web = p.add_argument_group("web page")
    web.add_argument("--web", action="store_true", help="serve a local page to try the model in a browser")
    web.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    web.add_argument("--port", type=int, default=7860)
    web.add_argument("--allow-host", action="append", default=None, metavar="NAME",
                     help="answer requests for this host name (repeatable; e.g. behind a proxy). Default: on "
                          "127.0.0.1 only localhost / 127.0.0.1 / [::1], on other addresses any name")
    web.add_argument("--add-model", nargs=2, action="append", default=[], metavar=("RECIPE", "CHECKPOINT"),
                     help="another model to pick on the page (repeatable); --config / --checkpoint give the first")
    return p


def _predictor_factory(args, config=None, checkpoint=None):
    """A zero-argument callable building the :class:`~vit_adapter_ds.apis.inference.Predictor` of the flags (of
    ``config`` / ``checkpoint`` when given: ``--add-model``); the recipe is checked here, before any page is served."""
    from ..config import load_recipe
    from ..engine.eval_cli import UsageError
    from ..tasks import task_for
    from .inference import Predictor

    config = args.config if config is None else config
    checkpoint = args.checkpoint if checkpoint is None else checkpoint
    task = task_for(load_recipe(config, args.cfg_options))
    if task.name == "semantic_segmentation":
        if args.score_thr is not None:
            raise UsageError("--score-thr: detection recipes only")
        options = {"overlay": True}
    elif task.name == "panoptic_segmentation":
        if args.score_thr is not None:
            raise UsageError("--score-thr: detection recipes only (the panoptic head's object_mask_thr decides)")
        options = {"save_json": True}
    else:
        options = {"save_json": True, "score_thr": args.score_thr}
    return lambda: Predictor(config, checkpoint, device=args.device, cfg_options=args.cfg_options, **options)


def main(argv=None) -> int:
    from ..data.user_images import list_images

    p = build_parser()
    args = p.parse_args(argv)
    if args.add_model and not args.web:
        p.error("--add-model: only with --web (the page lets you pick the model)")
    if args.allow_host and not args.web:
        p.error("--allow-host: only with --web")
    if args.checkpoint is None and not args.random_weights:
        p.error("--checkpoint is required (or --random-weights to try the untrained model)")
    if args.checkpoint is not None and args.random_weights:
        p.error("--checkpoint and --random-weights exclude each other")
    if args.web:
        if args.input:
            p.error("--web serves a page; --input is for the command line (give one or the other)")
        from .web import serve

        models = {}
        for config, checkpoint in [(args.config, args.checkpoint), *map(tuple, args.add_model)]:
            name = Path(config).stem if config else "synthetic_quickstart"
            name = name if name not in models else f"{name} ({len(models) + 1})"
            models[name] = _predictor_factory(args, config, checkpoint)
        serve(models, host=args.host, port=args.port, allowed_hosts=args.allow_host)
        return 0
    if not args.input or not args.out:
        p.error("--input and --out are required (or --web)")
    make = _predictor_factory(args)
    videos = [Path(x) for x in args.input if Path(x).suffix.lower() in VIDEO_SUFFIXES]
    if videos and len(args.input) > 1:
        p.error("give one video, or images / folders (not both)")
    predictor = make()
    progress = not args.no_progress
    if videos:
        if not videos[0].is_file():
            raise FileNotFoundError(f"{videos[0]}: no such video file")
        res = run_video(predictor, videos[0], args.out, progress=progress, fps=args.fps, overwrite=args.overwrite)
        if res.get("skipped_done"):
            print(f"{res['video']} exists (--overwrite to redo)")
        else:
            print(f"{videos[0]}: {res['frames']} frames -> {res['video']}"
                  + (f", {res['results']}" if res["results"] else ""))
        return 0
    paths = list_images(args.input, recursive=args.recursive)
    roots = [Path(x) for x in args.input if Path(x).is_dir()]
    singles = [Path(x) for x in args.input if Path(x).is_file()]  # named on the command line: must be readable
    res = run_images(predictor, paths, args.out, roots=roots, progress=progress, overwrite=args.overwrite,
                     must_read=singles)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "skipped.json").write_text(json.dumps(res["unreadable"], indent=1))
    print(f"{res['written']} images written to {out}, {res['skipped_done']} already done"
          + (f", {len(res['unreadable'])} unreadable (skipped, listed in {out / 'skipped.json'}):"
             if res["unreadable"] else ""))
    for u in res["unreadable"]:
        print(f"  skipped {u['reason']}")
    return 0


def cli(argv=None) -> int:
    """:func:`main` with the expected errors as one ``error:`` line and exit status 2."""
    from ..engine.eval_cli import run_cli

    return run_cli(main, argv)
