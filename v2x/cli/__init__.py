"""The ``v2x`` command line. Subcommands load lazily so ``v2x --help`` stays fast."""
