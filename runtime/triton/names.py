"""The names a Triton repository of a bundle is wired with: models, tensors, parameters.

Every writer (``inctrl_runtime.triton.repository``, ``inctrl_export.triton``), every python model
and the client use these, so that a name is spelled in one place.
"""

from __future__ import annotations

from inctrl_runtime.decisions import DECISION_FIELDS
from inctrl_runtime.results import REGION_FIELDS, SCORE_FIELDS, TILE_FIELDS

# The models of a repository: the entry point (a python model: decoding and tiling, the head,
# the decisions and the regions) and the encoder it calls (Triton's business-logic scripting).
ENTRY = "inctrl"
ENCODER = "inctrl_encoder"
MODELS = (ENTRY, ENCODER)
VERSION = "1"  # the one version folder of each model
CONFIG = "config.pbtxt"
PYTHON_MODEL = "model.py"
# Where an exported repository keeps its copy of the bundle (inside the entry's folder, beside
# its version folder: Triton ignores a folder whose name is not a version number).
BUNDLE_COPY = "bundle"

# The entry point's inputs: the encoded image file (png, jpg, ...) and the category, utf-8;
# and, optional, whether the image is a part of its category's drift monitor (absent: it is; a
# liveness probe's generated image is not).
IMAGE = "image"
CATEGORY = "category"
WATCHED = "watched"
# Where the defect is, as a record names it, and how a tiled frame was cut.
FRAME_SIZE, INSPECTED_FRACTION, REGION_THRESHOLD, REGIONS = REGION_FIELDS
TILING, DECISIVE_TILE = TILE_FIELDS
# The entry point's outputs, one row per image: the head's Scores (a tiled frame's, reduced from
# its tiles'), the decisions (NaN / false when none), the region fields (a NaN region_threshold
# and the JSON text null when there are no regions) and the tile fields (null and -1 for a
# frame scored whole): ``wire`` is their codec.
OUTPUTS = (*SCORE_FIELDS, *DECISION_FIELDS, *REGION_FIELDS, *TILE_FIELDS)

# The config parameters the python models read.
PARAM_BUNDLE = "bundle"  # the bundle folder: absolute, or relative to the repository's root
PARAM_FPR = "fpr"  # the false-positive rate of the decisions
PARAM_REGION_FPR = "region_fpr"  # the rate of good parts that may get any region (absent: fpr)
PARAM_THREADS = "threads"  # intra-op threads per instance ("" for onnxruntime's default)
PARAM_CATEGORIES = "categories"  # comma-separated categories the entry loads at start ("": all)
PARAM_DRIFT_DELTA = "drift_delta"  # the drift monitor's false-alarm probability (absent: 0.01)

# The gauges the entry model publishes on the metrics endpoint, per calibrated category (label
# ``category``): the drift monitor's evidence and alarm, and the share of its parts flagged.
DRIFT_EVIDENCE = "inctrl_drift_evidence"
DRIFT_ALARM = "inctrl_drift_alarm"
FLAGGED_RATE = "inctrl_flagged_rate"

# The encoder's model file, for the encoders Triton runs itself.
ENCODER_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan"}
ENCODERS = ("python", *ENCODER_FILES)
