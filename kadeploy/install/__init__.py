"""Whole-machine installs: a manifest describes the disk, its partitions and file
systems and what to send into each; the server streams every file system through
one chain and each node partitions, formats, receives, gives itself its identity
and installs its boot loader (see kadeploy-manifest(5))."""
