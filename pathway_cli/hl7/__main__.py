"""`python -m pathway_cli.hl7`: the gateway on its own, as its container runs it.

The same command as `pathway hl7-gateway`, without loading the rest of the CLI (the
embedded stack, simulation and audit, which import services the gateway's image leaves out).
"""

import typer

from pathway_cli.hl7.command import hl7_gateway

# Plain tracebacks, as the `pathway` CLI: a pretty one may print local values (settings).
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(hl7_gateway)
app()
