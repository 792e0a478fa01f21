"""inctrl_bench: latency, throughput and efficiency of inctrl's backends (``inctrl-bench``).

    from inctrl_bench.suite import BenchSettings, run_bench

    report = run_bench(BenchSettings(batches=(1, 8), shots=(2,)), json_file="bench.json")

``inctrl`` and torch are imported only inside the torch backends and the export steps, so that a
bundle benches with onnxruntime alone.
"""
