from dockplug.cli.main import main

main()
