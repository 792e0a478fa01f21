"""Serving a bundle on NVIDIA Triton Inference Server (torch-free).

``repository.write_repository`` writes a model repository (an entry model that decodes and tiles
the images, holds every category's bank and runs the head, and the bundle's encoder shared by
every category, which the entry calls through the server); ``server.TritonServer`` runs the real
``tritonserver`` of the serve extra on it; the python models' code is in ``entry``, ``stages``
and ``backend``, the answers' wire form in ``wire``.
"""
