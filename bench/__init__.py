"""inctrl_bench: latency, throughput and efficiency of inctrl's backends (``inctrl-bench``).

    from inctrl_bench.suite import BenchSettings, run_bench

    report = run_bench(BenchSettings(batches=(1, 8), shots=(2,)), json_file="bench.json")

torch and ``inctrl`` are imported only when a torch backend runs or a bundle is exported, so
that a bundle benches with onnxruntime alone.
"""
