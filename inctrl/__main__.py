from inctrl.cli import main

main()
