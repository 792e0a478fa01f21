"""The native TensorRT runner (torch-free): a bundle's plans run on the full or the lean TensorRT
runtime, through NVIDIA's CUDA bindings.

- ``engine``: ``TrtEngine`` (one plan: buffers, stream, runs) and ``open_trt_engines``;
- ``runtimes``: which TensorRT runtimes import here, and a started one that deserializes plans;
- ``plan_io``: a plan's IO tensors, and the checks of what a run is given;
- ``buffers``: device memory for batches, and the device values runs hand out;
- ``cuda``: the CUDA layer (GPUs, memory, streams, events, copies), which knows no plan;
- ``plans``: plan names, profiles and the manifest's records of builds.

The builder lives in ``inctrl_export.tensorrt``, as in TensorRT's samples.
"""
