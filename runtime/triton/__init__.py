"""Serving a bundle on NVIDIA Triton Inference Server (torch-free).

``repository.write_repository`` writes a model repository (an ensemble of the runtime's
preprocessing, the bundle's encoder shared by every category, and a head holding every
category's bank); ``server.TritonServer`` runs the real ``tritonserver`` of the serve extra on
it; the python models' code is in ``stages``, ``head`` and ``backend``.
"""
