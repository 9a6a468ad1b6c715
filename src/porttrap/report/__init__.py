"""`porttrap report`: one self-contained HTML page of what the traps saw over a period.

`data` aggregates the database in SQL (GROUP BY, never every row into Python) into frozen
values; `html` and `charts` turn those values into text. Neither prints, reads the clock or
writes a file: the CLI (porttrap.cli.report) does that.
"""
