"""`porttrap report`: one self-contained HTML page of what the traps saw over a period.

`figures` holds the values a store aggregates for it (`Store.report_figures`: in SQL for
SQLite, GROUP BY, never every row into Python); `data` makes the report of them (totals, ban
states); `html` and `charts` turn the report into text. None of them prints, reads the clock,
writes a file or runs SQL: the store and the CLI (porttrap.cli.report) do that.
"""
