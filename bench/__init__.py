"""Side-by-side benchmark of duratask against its peers (DBOS, the official durabletask SDK).

`python -m bench` runs every (system, workload, repeat) in a fresh subprocess and prints medians.
"""
