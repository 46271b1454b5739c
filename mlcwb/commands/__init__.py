"""One module per ``mlcwb`` subcommand.

Each module has ``register(subparsers)``, which only defines arguments, and a handler that imports
its stage module (and with it torch, transformers, pandas) when the command runs. Importing these
modules must stay cheap, because ``mlcwb --help`` and every subcommand's ``--help`` import all of
them; tests/test_cli.py checks that building the parser imports none of the heavy packages.
"""
