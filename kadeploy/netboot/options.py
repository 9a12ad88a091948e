"""The option of ka-d-server that belongs to the kit: --boot-states, which shows the
kit's booting nodes in the server's progress (kadeploy.netboot.progress). The kit
passes it to the install server it starts (`kadeploy netboot serve --install`)."""
from __future__ import annotations

import click

server_boot_states_option = click.option(
    "--boot-states", type=click.Path(dir_okay=False), default=None,
    help="The node states of a network boot kit (kadeploy netboot serve writes them, STATE_DIR/nodes.json): "
         "the progress also lists every node the kit boots, with its boot step, until it registers.")
