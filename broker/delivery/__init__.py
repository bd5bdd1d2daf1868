"""The delivery decisions, pure: a state and an input in, what to write out.

Every rule about where a delivery stands lives here: which subscriptions an
event goes to and whether it needs a row (`routing`), which ready deliveries a
lease takes and for whom (`leasing`), the ordering-key gate (`ordering`), what
a failed attempt becomes (`failure`), seek and redrive (`replay`), maximum
ages and retention (`upkeep`), and what a subscription's log and rows say to a
person (`views`). Nothing here reads a database, a clock or a random source
of its own: storage reads the facts (`records`) and writes the changes these
functions return, and the engine composes the two in one transaction.
"""
