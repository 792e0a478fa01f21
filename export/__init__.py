"""Import name inctrl_export, folder export/: PyTorch InCTRL -> a checked bundle for the runtime.

    from inctrl_export.bundle import export_bundle

    result = export_bundle("bundle/", "inctrl_k2.pyth", categories=["candle"])
    print(result.report.passed)

``inctrl-export`` is its command line (``onnx``, ``verify``).
"""
