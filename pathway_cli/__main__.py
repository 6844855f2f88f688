from pathway_cli.main import app

app()
