"""The `xgrader` command line: one module per subcommand, each with register()."""
