from sweep.orchestration.cli import main

main()
