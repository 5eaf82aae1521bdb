from mambadna.cli.main import main

main()
