"""Triton python model inctrl_preprocess: encoded image files -> the encoder's input, by the
runtime's preprocessing."""

from inctrl_runtime.triton.backend import python_model
from inctrl_runtime.triton.stages import PreprocessStage

TritonPythonModel = python_model(PreprocessStage.open)
