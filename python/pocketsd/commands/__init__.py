"""One module per `pocketsd` command. Each declares `NAME`, `HELP`, `add_arguments(parser)` and `run(args)`;
`cli.py` only assembles them (and `entry.run_entry` turns errors into the exit-code contract).

Commands stand on the top floor: they parse arguments, call one stage and print what it made — the work itself
lives in the stages.
"""
