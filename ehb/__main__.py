from ehb.commands.cli import main

main()
