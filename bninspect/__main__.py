from bninspect.cli import main

main()
