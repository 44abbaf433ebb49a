"""The command layer: each command's wiring of the stages (the CLI in stardss/cli.py calls
these). Reads the whole job and hands each stage the sections it uses."""
