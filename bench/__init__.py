"""Import name inctrl_bench, folder bench/: speed and efficiency of InCTRL's backends.

``inctrl-bench`` is its command line, ``suite.run_bench(BenchSettings(...))`` its Python call.
torch and ``inctrl`` are imported only when a torch backend runs or a bundle is exported.
"""
