"""Dassl's default configuration (same key names and values, less the keys nothing reads:
:data:`RETIRED`) plus this project's keys, marked "new" with a one-line comment each."""

from yacs.config import CfgNode as CN

_C = CN()

_C.OUTPUT_DIR = "./output"
_C.RESUME = ""  # a previous OUTPUT_DIR to continue from (its newest model.pth.tar-<epoch>)
_C.SEED = -1  # -1: do not seed (no fixed seed); other negative values are refused
_C.USE_CUDA = True  # use CUDA when available; CPU always works

# Input
_C.INPUT = CN()
_C.INPUT.SIZE = (224, 224)
_C.INPUT.INTERPOLATION = "bilinear"
_C.INPUT.TRANSFORMS = ()
_C.INPUT.NO_TRANSFORM = False
# new: image decoding and transforms: "pil" (Dassl's) or "tensor" (torchvision.io + v2, faster)
_C.INPUT.BACKEND = "pil"
_C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
_C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
_C.INPUT.CROP_PADDING = 4
_C.INPUT.RRCROP_SCALE = (0.08, 1.0)
_C.INPUT.CUTOUT_N = 1
_C.INPUT.CUTOUT_LEN = 16
_C.INPUT.GN_MEAN = 0.0
_C.INPUT.GN_STD = 0.15
_C.INPUT.COLORJITTER_B = 0.4
_C.INPUT.COLORJITTER_C = 0.4
_C.INPUT.COLORJITTER_S = 0.4
_C.INPUT.COLORJITTER_H = 0.1
_C.INPUT.RGS_P = 0.2
_C.INPUT.GB_P = 0.5
_C.INPUT.GB_K = 21

# Dataset
_C.DATASET = CN()
_C.DATASET.ROOT = ""
_C.DATASET.NAME = ""
_C.DATASET.SOURCE_DOMAINS = ()
_C.DATASET.TARGET_DOMAINS = ()
_C.DATASET.NUM_SHOTS = -1
_C.DATASET.SUBSAMPLE_CLASSES = "all"  # "all", "base" or "new" (CoOp/CoCoOp extension)
# new: "paper" selects the checkpoint on a test-derived val split as the official code;
# "clean" selects on the dataset's own (few-shot) val split.
_C.DATASET.PROTOCOL = "paper"
# new: "standard" reports one split named "test"; "base_new" reports "base" and "new".
_C.DATASET.EVAL_SPLITS = "standard"
# new: images checked when the dataset is built: "header" (opened), "exists" (stat), "off".
_C.DATASET.CHECK_IMAGES = "header"

# Dataloader
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
_C.DATALOADER.TRAIN_X = CN()
_C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
# False: BATCH_SIZE is the global batch of a step, split over the torchrun processes (the
# same optimisation on any number); True: each process reads BATCH_SIZE images and OPTIM.LR
# is multiplied by the number of processes (linear scaling)
_C.DATALOADER.TRAIN_X.BATCH_SIZE_PER_RANK = False
_C.DATALOADER.TEST = CN()
_C.DATALOADER.TEST.BATCH_SIZE = 32

# Model
_C.MODEL = CN()
_C.MODEL.INIT_WEIGHTS = ""
_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = ""
# new: folder with CLIP weight files; "" -> env CLIP_ROOT -> ~/.cache/clip
_C.MODEL.CLIP_ROOT = ""
# new: recompute the trained model's transformer blocks in the backward instead of keeping
# their activations (less memory for one more forward of the blocks; same results)
_C.MODEL.GRAD_CHECKPOINTING = False

# Optimization
_C.OPTIM = CN()
_C.OPTIM.NAME = "adam"
_C.OPTIM.LR = 0.0003
_C.OPTIM.WEIGHT_DECAY = 5e-4
_C.OPTIM.MOMENTUM = 0.9
_C.OPTIM.SGD_DAMPNING = 0
_C.OPTIM.SGD_NESTEROV = False
_C.OPTIM.RMSPROP_ALPHA = 0.99
_C.OPTIM.ADAM_BETA1 = 0.9
_C.OPTIM.ADAM_BETA2 = 0.999
_C.OPTIM.STAGED_LR = False
_C.OPTIM.NEW_LAYERS = ()
_C.OPTIM.BASE_LR_MULT = 0.1
_C.OPTIM.LR_SCHEDULER = "single_step"
_C.OPTIM.STEPSIZE = (-1,)
_C.OPTIM.GAMMA = 0.1
_C.OPTIM.MAX_EPOCH = 10
_C.OPTIM.WARMUP_EPOCH = -1
_C.OPTIM.WARMUP_TYPE = "linear"
_C.OPTIM.WARMUP_CONS_LR = 1e-5
_C.OPTIM.WARMUP_MIN_LR = 1e-5
_C.OPTIM.WARMUP_RECOUNT = True

# Train
_C.TRAIN = CN()
_C.TRAIN.CHECKPOINT_FREQ = 0
_C.TRAIN.PRINT_FREQ = 10
# new: clip the gradient norm of each registered model to this value (0 = off)
_C.TRAIN.GRAD_CLIP_NORM = 0.0

# Several processes (torchrun)
_C.DIST = CN()
# new: seconds a process waits for the others in a collective before it stops with an error
_C.DIST.TIMEOUT = 1800

# Test
_C.TEST = CN()
_C.TEST.EVALUATOR = "Classification"
_C.TEST.PER_CLASS_RESULT = False
_C.TEST.COMPUTE_CMAT = False
_C.TEST.NO_TEST = False
_C.TEST.SPLIT = "test"
_C.TEST.FINAL_MODEL = "last_step"
# new: write logits_<split>.pt (logits, labels, impaths) next to results.json
_C.TEST.SAVE_LOGITS = False

# Trainer specifics (each trainer adds its section with @register_config_extension)
_C.TRAINER = CN()
_C.TRAINER.NAME = ""

# Dassl keys that nothing here reads and no official yaml file sets, removed from the
# defaults, with the values older runs' config.yaml holds. A file or command line that sets
# one is still accepted (ignored, as before), and the config hash counts them as these
# values, so a run keeps its hash across the removal.
RETIRED = {
    "VERSION": 1, "VERBOSE": True, "INPUT.RANDAUGMENT_N": 2, "INPUT.RANDAUGMENT_M": 10,
    "DATASET.NUM_LABELED": -1, "DATASET.VAL_PERCENT": 0.1, "DATALOADER.K_TRANSFORMS": 1,
    "DATALOADER.RETURN_IMG0": False, "DATALOADER.TRAIN_X.N_DOMAIN": 0,
    "DATALOADER.TRAIN_X.N_INS": 16, "DATALOADER.TRAIN_U.SAME_AS_X": True,
    "DATALOADER.TRAIN_U.SAMPLER": "RandomSampler", "DATALOADER.TRAIN_U.BATCH_SIZE": 32,
    "DATALOADER.TRAIN_U.N_DOMAIN": 0, "DATALOADER.TRAIN_U.N_INS": 16,
    "DATALOADER.TEST.SAMPLER": "SequentialSampler",
    "MODEL.BACKBONE.PRETRAINED": True, "MODEL.HEAD.NAME": "", "MODEL.HEAD.HIDDEN_LAYERS": [],
    "MODEL.HEAD.ACTIVATION": "relu", "MODEL.HEAD.BN": True, "MODEL.HEAD.DROPOUT": 0.0,
    "TRAIN.COUNT_ITER": "train_x",
}  # fmt: skip


def is_retired(key: str) -> bool:
    """Whether ``key`` is in :data:`RETIRED`, or a section of nothing but retired keys."""
    return any(r == key or r.startswith(key + ".") for r in RETIRED)


# Keys added after runs were recorded (here or by an extension: a dataset's section), which
# older config.yaml files lack. At its default such a key is left out of the config hash and
# "absent" in a saved config counts as the default, so older runs keep their hash and resume.
ADDED: dict[str, object] = {}


def register_added_keys(defaults: dict[str, object]) -> None:
    """Declare keys (dotted name -> default) added after runs were recorded (see ADDED)."""
    ADDED.update(defaults)
