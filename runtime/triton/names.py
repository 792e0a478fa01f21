"""The names a Triton repository of a bundle is wired with: models, tensors, parameters.

Every writer (``inctrl_runtime.triton.repository``, ``inctrl_export.triton``), every python model
and the client use these, so that a name is spelled in one place.
"""

from __future__ import annotations

from inctrl_runtime.decisions import DECISION_FIELDS
from inctrl_runtime.results import REGION_FIELDS, SCORE_FIELDS

# The models of a repository: the entry point (an ensemble) and its three steps.
ENSEMBLE = "inctrl"
PREPROCESS = "inctrl_preprocess"
ENCODER = "inctrl_encoder"
HEAD = "inctrl_head"
MODELS = (ENSEMBLE, PREPROCESS, ENCODER, HEAD)
VERSION = "1"  # the one version folder of each model
CONFIG = "config.pbtxt"
PYTHON_MODEL = "model.py"
# Where an exported repository keeps its copy of the bundle (inside the head's folder, beside
# its version folder: Triton ignores a folder whose name is not a version number).
BUNDLE_COPY = "bundle"

# The entry point's inputs: the encoded image file (png, jpg, ...) and the category, utf-8.
IMAGE = "image"
CATEGORY = "category"
# The preprocessed image: the preprocess model's output, and the ensemble's tensor that feeds the
# encoder's input (named by the encoder graph: ``image``).
PIXELS = "pixels"
# Where the defect is, as a record names it: the frame's size (width, height) is the preprocess
# model's output, which the head reads too; the head gives the others.
FRAME_SIZE, INSPECTED_FRACTION, REGION_THRESHOLD, REGIONS = REGION_FIELDS
# The entry point's outputs: the head's Scores, the decisions (NaN / false when none), the region
# fields (a NaN region_threshold and the JSON text null when there are no regions).
OUTPUTS = (*SCORE_FIELDS, *DECISION_FIELDS, *REGION_FIELDS)
HEAD_OUTPUTS = tuple(name for name in OUTPUTS if name != FRAME_SIZE)

# The config parameters the python models read.
PARAM_BUNDLE = "bundle"  # the bundle folder: absolute, or relative to the repository's root
PARAM_FPR = "fpr"  # the false-positive rate of the decisions
PARAM_REGION_FPR = "region_fpr"  # the rate of good parts that may get any region (absent: fpr)
PARAM_THREADS = "threads"  # intra-op threads per instance ("" for onnxruntime's default)
PARAM_CATEGORIES = "categories"  # comma-separated categories the head loads at start ("": all)

# The encoder's model file, for the encoders Triton runs itself.
ENCODER_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan"}
ENCODERS = ("python", *ENCODER_FILES)
