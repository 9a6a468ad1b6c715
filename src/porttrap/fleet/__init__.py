"""A fleet of porttrap hosts sharing their bans through PostgreSQL.

Each host publishes the bans it decides into one shared, append-only log (schema `porttrap`:
`schema.py`), is told of new rows by NOTIFY, and reads them back in id order. The database
itself enforces that a host writes only under its own name (row-level security); every row
read back is still checked before it can reach a kernel (`rows.py`, pure). `admin.py` holds
what an admin runs once: creating the schema and a role per host.

This package's `__init__` imports nothing: the pure core may import `porttrap.fleet.rows`
without pulling in the database driver.
"""
