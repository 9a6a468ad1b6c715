"""Importers from the tools people run before porttrap: PortSentry (1.2 and 2.x) and port_trap.

Each module turns the old tool's files into a porttrap TOML config that reproduces its
behaviour, plus `Note`s saying, line by line, what could not be carried over exactly and why.
Pure translation: the modules read the files they are given and nothing else; the CLI
(`porttrap import`) writes the result and imports port_trap's ban history into the store."""
