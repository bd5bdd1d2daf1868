"""Group-commit operations: storage's facts meet the delivery decisions in one transaction.

Each operation is a function of a write (or read) transaction and the current
time: it reads what the decisions in `broker.delivery` need, calls them, and
writes what they return. The engine runs them through group commit; the
storage tests run them as the engine does, on every storage.
"""
