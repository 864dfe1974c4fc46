"""One module per ``poolbench`` subcommand; each defines ``add_parser(subparsers)``."""
