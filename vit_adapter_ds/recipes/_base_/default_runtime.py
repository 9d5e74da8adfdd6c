# Runtime defaults (mmseg 0.20 _base_/default_runtime.py, plus the keys this engine adds).
log_config = dict(interval=50)                    # metrics.jsonl / TensorBoard every `interval` iterations
load_from = None                                  # whole-segmentor weights for a new run (two-stage fine-tune)
resume_from = None                                # a checkpoint tag dir to resume (or --resume auto|PATH)
seed = 0
work_dir = None                                   # default: work_dirs/<recipe name>
global_batch_size = None                          # images per optimizer step over all ranks (None: from ds config)
vis = dict(num_images=4)                          # prediction PNGs written at each evaluation
