"""Scale benchmark: listing and purging instances with a million stored (`python -m bench.scale`).

- `dataset`: the stored instances, generated deterministically (ids, statuses, histories).
- `load`: writes them straight into a storage's tables, for set-up only.
- `measure`: the timed operations, through the public client only.
- `__main__`: the command line and the report.
"""
