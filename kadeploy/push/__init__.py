"""kadeploy push: one command on the head node sends files or directories through the
chain to many running nodes, whose clients are started by ssh, ClusterShell, pdsh or
Slurm (kadeploy.push.launchers); each node renames its copy into place only once it is
verified (kadeploy.push.receive), and the head prints who has it as folded node sets.
"""
