"""The command line: argument parsing, output for people and for scripts, exit codes.
Only this package prints or exits."""
