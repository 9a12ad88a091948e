from kadeploy.entry import kadeploy_main

kadeploy_main()
