"""The rolling audit of the pathway (guide section 4), computed from the events alone.

`source` reads the events (Kafka or a JSON Lines export), `compute` turns them into figures,
`render` writes CSV, JSON and HTML, `export` dumps the events, `commands` is the CLI.
"""
