"""Helpers shared by test files (not a test module): free TCP ports for the rendezvous of launched training runs, and
pycocotools as the independent reference scorer of detections."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it): each launched run gets its own, so no
    two tests -- or a straggler of an earlier one -- share a master port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pycocotools_stats_on(images, anns, categories, preds) -> dict:
    """:func:`pycocotools_stats` on ground truth given as COCO ``images`` / ``annotations`` / ``categories`` lists
    (a loader's records): label i -> ``categories[i]['id']``."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = {"images": images, "categories": [dict(c) for c in categories],
                  "annotations": [dict(a, id=i + 1, iscrowd=a.get("iscrowd", 0)) for i, a in enumerate(anns)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return pycocotools_stats(gt, [int(c["id"]) for c in categories], preds)


def pycocotools_stats(gt, cat_ids, preds) -> dict:
    """COCO box / mask AP of ``preds`` ([(image id, {"boxes", "labels", "scores", "masks"})]) computed by pycocotools
    alone on the ``COCO`` ground truth ``gt``: label i -> ``cat_ids[i]``, boxes as xywh, masks as RLE, mmdet's maxDets
    (100, 300, 1000). Keys as the evaluator's: ``bbox_mAP``, ``bbox_mAP_50``, ..., ``segm_mAP_l``."""
    import contextlib
    import io

    import numpy as np
    from pycocotools import mask as mask_utils
    from pycocotools.cocoeval import COCOeval

    res = {"bbox": [], "segm": []}
    for image_id, p in preds:
        for box, label, score, mask in zip(p["boxes"].tolist(), p["labels"].tolist(), p["scores"].tolist(),
                                           p["masks"], strict=True):
            x1, y1, x2, y2 = box
            common = {"image_id": int(image_id), "category_id": cat_ids[label], "score": score}
            res["bbox"].append(dict(common, bbox=[x1, y1, x2 - x1, y2 - y1]))
            rle = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
            res["segm"].append(dict(common, segmentation=rle))
    out = {}
    for t, r in res.items():
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, gt.loadRes(r), t)
            ev.params.maxDets = [100, 300, 1000]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out.update({f"{t}_{n}": float(ev.stats[i]) for i, n in enumerate(("mAP", "mAP_50", "mAP_75", "mAP_s",
                                                                            "mAP_m", "mAP_l"))})
    return out
