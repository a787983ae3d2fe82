"""Command-line interface: one module per subcommand, dispatched by :mod:`unetzoo.cli.main`."""
