# Official: detection/configs/_base_/default_runtime.py (mmdet 2.x), plus the keys this engine adds (as
# ./default_runtime.py for segmentation).
checkpoint_config = dict(interval=1)              # every epoch
log_config = dict(interval=50)
load_from = None
resume_from = None
seed = 0
work_dir = None                                   # default: work_dirs/<recipe name>
global_batch_size = None                          # images per optimizer step over all ranks (None: from ds config)
vis = dict(num_images=4)                          # prediction images written at each evaluation
