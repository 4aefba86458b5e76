from avsegcli.cli import main

main()
