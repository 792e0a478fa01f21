"""The python backend's side of a stage: Triton's requests in, its responses out.

``python_model(open_stage)`` makes the ``TritonPythonModel`` class a model.py defines: the
stage opens in ``initialize`` (a bundle that fails its checks fails the model's load, with the
runtime's one line in the server's log), and ``execute`` answers every request of the batch,
a refused one with a ``TritonError`` holding the runtime's one-line message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from inctrl_runtime.triton.stages import Stage


def python_model(open_stage: Callable[[Mapping[str, str]], Stage]) -> type:
    """The ``TritonPythonModel`` of a stage; only the python backend's stub can call it (it
    provides ``triton_python_backend_utils``)."""
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def initialize(self, args: Mapping[str, str]) -> None:
            self.stage = open_stage(args)

        def execute(self, requests: list) -> list:
            feeds = [
                {name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in
                 self.stage.inputs}
                for r in requests
            ]  # fmt: skip
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
