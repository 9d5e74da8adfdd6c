# Official: detection/configs/htc++/htc++_beit_adapter_large_fpn_3x_coco_old.py (fd64a51)
# The BEiT-L HTC++ recipe (./htc++_beit_adapter_large_fpn_3x_coco.py: same pretrained file, neck, heads, RPN, train
# and test settings, pipelines, optimizer and schedule) with the two fields the official file sets differently:
# backbone drop_path_rate=0.3 (the file's comment: "maybe 0.4 is better") and version='old', which in the official
# detection BEiTAdapter adds the ViT tokens after interaction k to output level k (k = 1..4; 'new' adds the last
# interaction's tokens to all four levels). No parameter differs (401M); 16 GPUs x 1 image (htc++/README).
# Reported box / mask AP ("Old Results" of detection/configs/htc++/README.md): 57.9 / 50.2 (minival), 58.5 / 50.8
# (test-dev); with TTA (no official config) 59.8 / 51.7 (minival), 60.1 / 52.1 (test-dev).
_base_ = ['./htc++_beit_adapter_large_fpn_3x_coco.py']
model = dict(backbone=dict(drop_path_rate=0.3, version='old'))
