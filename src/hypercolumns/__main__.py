from hypercolumns.cli import main

main()
