"""Triton python model inctrl: image files and categories -> scores, decisions, regions; the
files decoded and tiled here, the encoder model called through the server, the head here."""

from inctrl_runtime.triton.backend import bls_encoder, metric_gauges, python_model
from inctrl_runtime.triton.entry import EntryStage

TritonPythonModel = python_model(lambda args: EntryStage.open(args, bls_encoder, metric_gauges))
