"""Triton python model inctrl_head: each category's bank and the head graph, run once per
category of a batch, with the decisions."""

from inctrl_runtime.triton.backend import python_model
from inctrl_runtime.triton.head_stage import HeadStage

TritonPythonModel = python_model(HeadStage.open)
