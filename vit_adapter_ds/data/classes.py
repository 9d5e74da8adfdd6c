"""Class lists and label mappings of the supported datasets (dataset facts, no code).

* ``ADE20K_CLASSES``: the 150 SceneParsing classes (``objectInfo150``); the PNGs hold 0 = "other/unlabeled"
  and 1..150, mapped with reduce-zero-label (0 -> 255, v -> v - 1).
* ``COCO_STUFF_CLASSES``: the 171 classes of COCO-Stuff-164k in train-id order (80 things, 91 stuff).
* ``COCO_STUFF_IDS``: the original (0-based) ids of ``stuffthingmaps_trainval2017`` in train-id order: train id
  ``t`` is original id ``COCO_STUFF_IDS[t]``. The 11 ids absent here (11, 25, 28, 29, 44, 65, 67, 68, 70, 82,
  90) are COCO category ids without annotations and never occur in the maps (mmseg's converter would leave them
  unchanged); we map them, and every other id outside the table, to 254, an invalid label that the loader
  reports as bad data instead of training on it. 255 (unlabelled) stays 255. This is the table of mmseg's
  COCO-Stuff-164k converter
  (``tools/dataset_converters/coco_stuff164k.py``, ``clsID_to_trID``), checked in tests against that file.
"""
from ..utils.vis import make_palette  # noqa: F401  (the one palette rule; the shard writers use it from here)

ADE20K_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed ', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence',
    'desk', 'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand',
    'path', 'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge',
    'bookcase', 'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove',
    'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus',
    'towel', 'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver',
    'airplane', 'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle',
    'buffet', 'poster', 'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything',
    'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven',
    'ball', 'food', 'step', 'tank', 'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake',
    'dishwasher', 'screen', 'blanket', 'sculpture', 'hood', 'sconce', 'vase', 'traffic light', 'tray',
    'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor', 'bulletin board', 'shower', 'radiator',
    'glass', 'clock', 'flag',
)

COCO_STUFF_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
    'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard',
    'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
    'teddy bear', 'hair drier', 'toothbrush', 'banner', 'blanket', 'branch', 'bridge', 'building-other',
    'bush', 'cabinet', 'cage', 'cardboard', 'carpet', 'ceiling-other', 'ceiling-tile', 'cloth', 'clothes',
    'clouds', 'counter', 'cupboard', 'curtain', 'desk-stuff', 'dirt', 'door-stuff', 'fence', 'floor-marble',
    'floor-other', 'floor-stone', 'floor-tile', 'floor-wood', 'flower', 'fog', 'food-other', 'fruit',
    'furniture-other', 'grass', 'gravel', 'ground-other', 'hill', 'house', 'leaves', 'light', 'mat', 'metal',
    'mirror-stuff', 'moss', 'mountain', 'mud', 'napkin', 'net', 'paper', 'pavement', 'pillow', 'plant-other',
    'plastic', 'platform', 'playingfield', 'railing', 'railroad', 'river', 'road', 'rock', 'roof', 'rug',
    'salad', 'sand', 'sea', 'shelf', 'sky-other', 'skyscraper', 'snow', 'solid-other', 'stairs', 'stone',
    'straw', 'structural-other', 'table', 'tent', 'textile-other', 'towel', 'tree', 'vegetable', 'wall-brick',
    'wall-concrete', 'wall-other', 'wall-panel', 'wall-stone', 'wall-tile', 'wall-wood', 'water-other',
    'waterdrops', 'window-blind', 'window-other', 'wood',
)

COCO_STUFF_IDS = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 26, 27, 30, 31, 32,
    33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
    60, 61, 62, 63, 64, 66, 69, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 83, 84, 85, 86, 87, 88, 89, 91,
    92, 93, 94, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114,
    115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128, 129, 130, 131, 132, 133, 134, 135,
    136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147, 148, 149, 150, 151, 152, 153, 154, 155, 156,
    157, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171, 172, 173, 174, 175, 176, 177,
    178, 179, 180, 181,
)

assert len(ADE20K_CLASSES) == 150 and len(COCO_STUFF_CLASSES) == 171 and len(COCO_STUFF_IDS) == 171


def reduce_zero_label_map():
    """256-entry label lookup table of mmseg's ``reduce_zero_label``: 0 -> 255, v -> v - 1, 255 -> 255."""
    return [255] + list(range(254)) + [255]


def coco_stuff_label_map():
    """256-entry lookup table: original stuffthingmaps id -> COCO-Stuff-164k train id (171 classes), 255 -> 255,
    any other id -> 254 (invalid: >= 171, flagged as bad data by the loader)."""
    lut = [254] * 255 + [255]
    for train_id, orig in enumerate(COCO_STUFF_IDS):
        lut[orig] = train_id
    return lut


def identity_label_map():
    """256-entry identity lookup table (labels already stored as train ids, 255 = ignore)."""
    return list(range(256))



# ---------------------------------------------------------------- Cityscapes and Mapillary Vistas
# CITYSCAPES_CLASSES / CITYSCAPES_PALETTE: the 19 train ids of mmseg's CityscapesDataset (``*_gtFine_labelTrainIds.png``
# written by mmseg's tools/convert_datasets/cityscapes.py: 0..18, 255 = ignore), classes and palette as mmseg's.
# MAPILLARY_CLASSES / MAPILLARY_PALETTE: the 66 ids (65 classes + 'Unlabeled' = 65) of Mapillary Vistas v1.2
# ``labels/*.png`` as the official ViT-Adapter MapillaryDataset (segmentation/mmseg_custom/datasets/mapillary.py)
# lists them. MAPILLARY_TO_CITYSCAPES: the official ``MapillaryHack`` pipeline step's table
# (segmentation/mmseg_custom/datasets/pipelines/transform.py): Cityscapes train id t <- the Mapillary ids
# MAPILLARY_TO_CITYSCAPES[t]; every other Mapillary id -> 255.
CITYSCAPES_CLASSES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign', 'vegetation',
    'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle',
)
CITYSCAPES_PALETTE = [
    [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153], [153, 153, 153],
    [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152], [70, 130, 180], [220, 20, 60], [255, 0, 0],
    [0, 0, 142], [0, 0, 70], [0, 60, 100], [0, 80, 100], [0, 0, 230], [119, 11, 32],
]
MAPILLARY_CLASSES = (
    'Bird', 'Ground Animal', 'Curb', 'Fence', 'Guard Rail', 'Barrier', 'Wall', 'Bike Lane', 'Crosswalk - Plain',
    'Curb Cut', 'Parking', 'Pedestrian Area', 'Rail Track', 'Road', 'Service Lane', 'Sidewalk', 'Bridge',
    'Building', 'Tunnel', 'Person', 'Bicyclist', 'Motorcyclist', 'Other Rider', 'Lane Marking - Crosswalk',
    'Lane Marking - General', 'Mountain', 'Sand', 'Sky', 'Snow', 'Terrain', 'Vegetation', 'Water', 'Banner',
    'Bench', 'Bike Rack', 'Billboard', 'Catch Basin', 'CCTV Camera', 'Fire Hydrant', 'Junction Box', 'Mailbox',
    'Manhole', 'Phone Booth', 'Pothole', 'Street Light', 'Pole', 'Traffic Sign Frame', 'Utility Pole',
    'Traffic Light', 'Traffic Sign (Back)', 'Traffic Sign (Front)', 'Trash Can', 'Bicycle', 'Boat', 'Bus', 'Car',
    'Caravan', 'Motorcycle', 'On Rails', 'Other Vehicle', 'Trailer', 'Truck', 'Wheeled Slow', 'Car Mount',
    'Ego Vehicle', 'Unlabeled',
)
MAPILLARY_PALETTE = [
    [165, 42, 42], [0, 192, 0], [196, 196, 196], [190, 153, 153], [180, 165, 180], [90, 120, 150],
    [102, 102, 156], [128, 64, 255], [140, 140, 200], [170, 170, 170], [250, 170, 160], [96, 96, 96],
    [230, 150, 140], [128, 64, 128], [110, 110, 110], [244, 35, 232], [150, 100, 100], [70, 70, 70],
    [150, 120, 90], [220, 20, 60], [255, 0, 0], [255, 0, 100], [255, 0, 200], [200, 128, 128], [255, 255, 255],
    [64, 170, 64], [230, 160, 50], [70, 130, 180], [190, 255, 255], [152, 251, 152], [107, 142, 35], [0, 170, 30],
    [255, 255, 128], [250, 0, 30], [100, 140, 180], [220, 220, 220], [220, 128, 128], [222, 40, 40],
    [100, 170, 30], [40, 40, 40], [33, 33, 33], [100, 128, 160], [142, 0, 0], [70, 100, 150], [210, 170, 100],
    [153, 153, 153], [128, 128, 128], [0, 0, 80], [250, 170, 30], [192, 192, 192], [220, 220, 0], [140, 140, 20],
    [119, 11, 32], [150, 0, 255], [0, 60, 100], [0, 0, 142], [0, 0, 90], [0, 0, 230], [0, 80, 100],
    [128, 64, 64], [0, 0, 110], [0, 0, 70], [0, 0, 192], [32, 32, 32], [120, 10, 10], [0, 0, 0],
]
MAPILLARY_TO_CITYSCAPES = (
    (13, 24, 41), (2, 15), (17,), (6,), (3,), (45, 47), (48,), (50,), (30,), (29,), (27,), (19,), (20, 21, 22),
    (55,), (61,), (54,), (58,), (57,), (52,),
)

assert len(CITYSCAPES_CLASSES) == len(CITYSCAPES_PALETTE) == len(MAPILLARY_TO_CITYSCAPES) == 19
assert len(MAPILLARY_CLASSES) == len(MAPILLARY_PALETTE) == 66


def mapillary_hack_label_map():
    """256-entry lookup table of the official ``MapillaryHack`` step: Mapillary id -> Cityscapes train id
    (:data:`MAPILLARY_TO_CITYSCAPES`), the other Mapillary ids 0..65 -> 255. Values above 65 never occur in
    Mapillary v1.2 labels (the writer refuses them); the official step would turn them into 0 ('road'), we map them
    to 254, an invalid label that the loader reports as bad data."""
    lut = [255] * 66 + [254] * 190
    for train_id, ids in enumerate(MAPILLARY_TO_CITYSCAPES):
        for i in ids:
            lut[i] = train_id
    return lut


# Pascal Context, the 59-class setting (mmseg's PascalContextDataset59): labels 0 = background, 1..59 (reduce-zero-
# label). Class names and palette as mmseg's dataset class.
PASCAL_CONTEXT_59_CLASSES = (
    'aeroplane', 'bag', 'bed', 'bedclothes', 'bench', 'bicycle', 'bird', 'boat', 'book', 'bottle', 'building',
    'bus', 'cabinet', 'car', 'cat', 'ceiling', 'chair', 'cloth', 'computer', 'cow', 'cup', 'curtain', 'dog',
    'door', 'fence', 'floor', 'flower', 'food', 'grass', 'ground', 'horse', 'keyboard', 'light', 'motorbike',
    'mountain', 'mouse', 'person', 'plate', 'platform', 'pottedplant', 'road', 'rock', 'sheep', 'shelves',
    'sidewalk', 'sign', 'sky', 'snow', 'sofa', 'table', 'track', 'train', 'tree', 'truck', 'tvmonitor', 'wall',
    'water', 'window', 'wood',
)
PASCAL_CONTEXT_59_PALETTE = [
    [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3], [120, 120, 80], [140, 140, 140], [204, 5, 255],
    [230, 230, 230], [4, 250, 7], [224, 5, 255], [235, 255, 7], [150, 5, 61], [120, 120, 70], [8, 255, 51],
    [255, 6, 82], [143, 255, 140], [204, 255, 4], [255, 51, 7], [204, 70, 3], [0, 102, 200], [61, 230, 250],
    [255, 6, 51], [11, 102, 255], [255, 7, 71], [255, 9, 224], [9, 7, 230], [220, 220, 220], [255, 9, 92],
    [112, 9, 255], [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10], [7, 255, 255],
    [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7], [255, 122, 8], [0, 255, 20], [255, 8, 41],
    [255, 5, 153], [6, 51, 255], [235, 12, 255], [160, 150, 20], [0, 163, 255], [140, 140, 140], [250, 10, 15],
    [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0], [153, 255, 0], [0, 0, 255], [255, 71, 0],
    [0, 235, 255], [0, 173, 255], [31, 0, 255],
]
assert len(PASCAL_CONTEXT_59_CLASSES) == 59 and len(PASCAL_CONTEXT_59_PALETTE) == 59


# CHASE_DB1 retinal vessels (mmseg's ChaseDB1Dataset): the converted ``*_1stHO.png`` hold 0 = background, 1 = vessel.
CHASE_DB1_CLASSES = ('background', 'vessel')
CHASE_DB1_PALETTE = [[120, 120, 120], [6, 230, 230]]


# ISPRS Potsdam (the official ViT-Adapter / mmseg PotsdamDataset): mmseg's converter writes 0 = other colours
# (boundary) and 1..6 for the RGB-coded classes below (reduce-zero-label).
POTSDAM_CLASSES = ('impervious_surface', 'building', 'low_vegetation', 'tree', 'car', 'clutter')
POTSDAM_PALETTE = [[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]]
