"""``python -m inctrl_bench`` = ``inctrl-bench``."""

from inctrl_bench.cli import main

main()
