"""Import name inctrl_bench, folder bench/: speed and efficiency of InCTRL's backends.

    from inctrl_bench.suite import BenchSettings, run_bench

    report = run_bench(BenchSettings(batches=(1, 8), shots=(2,)), json_file="bench.json")

``inctrl-bench`` is its command line. torch and ``inctrl`` are imported only when a torch
backend runs or a bundle is exported, so that a bundle benches with onnxruntime alone.
"""
