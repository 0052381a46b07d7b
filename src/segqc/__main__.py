from segqc.cli import main

main()
