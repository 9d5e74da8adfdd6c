# Official: detection/configs/_base_/schedules/schedule_3x.py (mmdet 2.x): 36 epochs, lr steps at epochs 27 and 33,
# 500-iteration linear warm-up from 0.001 x lr. (The recipes replace the SGD optimizer with AdamW.)
optimizer = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001)
optimizer_config = dict(grad_clip=None)
lr_config = dict(policy='step', warmup='linear', warmup_iters=500, warmup_ratio=0.001, step=[27, 33])
runner = dict(type='EpochBasedRunner', max_epochs=36)
