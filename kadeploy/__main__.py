from kadeploy.cli import kadeploy_main

kadeploy_main()
