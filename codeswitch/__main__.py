from codeswitch.cli import main

main()
