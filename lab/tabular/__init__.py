"""The benchmark table and its analysis: a table of the lab's own trained points (table.py), their
features (features.py), a surrogate of their learning curves (surrogate.py) and the statistics the
``lab bench`` commands print (stats.py).

Nothing is imported here: scikit-learn (the surrogate's) costs a second of start-up, and a command
that only reads the table should not pay it.
"""
