from ehb.cli import main

main()
