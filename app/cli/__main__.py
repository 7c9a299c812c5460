from app.cli.commands import main

main()
