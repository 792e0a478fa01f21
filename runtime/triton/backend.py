"""The python backend's side of a stage: Triton's requests in, its responses out.

``python_model(open_stage)`` makes the ``TritonPythonModel`` class a model.py defines: the
stage opens in ``initialize`` (a bundle that fails its checks fails the model's load, with the
runtime's one line in the server's log), and ``execute`` answers every request of the batch,
a refused one with a ``TritonError`` holding the runtime's one-line message. ``bls_encoder``
runs the repository's encoder model from another model (business-logic scripting).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from inctrl_runtime.bundle import Bundle
from inctrl_runtime.triton.names import DRIFT_ALARM, DRIFT_EVIDENCE, ENCODER, FLAGGED_RATE
from inctrl_runtime.triton.stages import Feeds, Stage


def python_model(open_stage: Callable[[Mapping[str, str]], Stage]) -> type:
    """The ``TritonPythonModel`` of a stage; only the python backend's stub can call it (it
    provides ``triton_python_backend_utils``)."""
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def initialize(self, args: Mapping[str, str]) -> None:
            self.stage = open_stage(args)

        def execute(self, requests: list) -> list:
            feeds = []
            for request in requests:
                found = {name: pb_utils.get_input_tensor_by_name(request, name) for name in
                         (*self.stage.inputs, *getattr(self.stage, "optional", ()))}  # fmt: skip
                feeds.append({n: t.as_numpy() for n, t in found.items() if t is not None})
            responses = []
            for reply in self.stage.run(feeds):
                if isinstance(reply, Exception):
                    error = pb_utils.TritonError(str(reply))
                    responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                else:
                    tensors = [pb_utils.Tensor(name, array) for name, array in reply.items()]
                    responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            return responses

        def finalize(self) -> None:
            self.stage.close()

    return TritonPythonModel


def bls_encoder(bundle: Bundle, max_batch: int) -> Callable[[np.ndarray], Feeds]:
    """A function that runs the repository's encoder model (``inctrl_encoder``) on N x 3 x S x S
    pixels through the server, in requests of at most ``max_batch`` rows (its
    ``max_batch_size``), each a batch its dynamic batcher may merge with other models' calls;
    an encoder that fails raises its error. Only the python backend's stub can call it."""
    import triton_python_backend_utils as pb_utils

    graph = bundle.graphs["encoder"]
    (pixels_name,) = (spec.name for spec in graph.inputs)
    names = [spec.name for spec in graph.outputs]

    def encode(pixels: np.ndarray) -> Feeds:
        parts = []
        for start in range(0, len(pixels), max_batch):
            request = pb_utils.InferenceRequest(
                model_name=ENCODER,
                inputs=[pb_utils.Tensor(pixels_name, pixels[start : start + max_batch])],
                requested_output_names=names,
            )
            response = request.exec()
            if response.has_error():
                raise RuntimeError(f"{ENCODER}: {response.error().message()}")
            parts.append({n: pb_utils.get_output_tensor_by_name(response, n).as_numpy()
                          for n in names})  # fmt: skip
        return {name: np.concatenate([part[name] for part in parts]) for name in names}

    return encode


# Each gauge's description on the metrics endpoint.
_GAUGES = {
    DRIFT_EVIDENCE: "the drift monitor's evidence that a category's parts are no longer like "
    "its calibration's (a test martingale: 1 at the start, the alarm at 1/delta)",
    DRIFT_ALARM: "1 once the drift monitor's evidence reached 1/delta since its last reset",
    FLAGGED_RATE: "the share of a category's parts decided anomalous since the monitor's reset",
}


def metric_gauges() -> Callable[[str, float, bool, float], None]:
    """A function that sets a category's drift gauges (label ``category``) on Triton's metrics
    endpoint, through the python backend's custom metrics. Only the python backend's stub can
    call it."""
    import triton_python_backend_utils as pb_utils

    families = {
        name: pb_utils.MetricFamily(name=name, description=text, kind=pb_utils.MetricFamily.GAUGE)
        for name, text in _GAUGES.items()
    }
    held: dict[tuple[str, str], object] = {}

    def publish(category: str, evidence: float, alarm: bool, flagged: float) -> None:
        for name, value in ((DRIFT_EVIDENCE, evidence), (DRIFT_ALARM, float(alarm)),
                            (FLAGGED_RATE, flagged)):  # fmt: skip
            if (name, category) not in held:
                held[name, category] = families[name].Metric(labels={"category": category})
            held[name, category].set(float(value))

    return publish
