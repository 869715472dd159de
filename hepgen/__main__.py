from hepgen.cli import main

main()
