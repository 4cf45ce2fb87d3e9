from bifamily.cli import main

main()
