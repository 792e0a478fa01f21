"""The model.py sources of a repository's python models, copied into ``<model>/1/model.py``
by ``inctrl_runtime.triton.repository``; each defines the stub's ``TritonPythonModel``."""
