"""Runtime kit shared by the five services: wiring only, no pathway rules."""
