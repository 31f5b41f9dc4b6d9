from clusterplan.cli.main import main

main()
