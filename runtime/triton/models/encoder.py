"""Triton python model inctrl_encoder: the bundle's encoder on the runtime's CPU engine, one
run per batch of requests."""

from inctrl_runtime.triton.backend import python_model
from inctrl_runtime.triton.stages import EncoderStage

TritonPythonModel = python_model(EncoderStage.open)
