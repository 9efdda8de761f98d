"""Compiler passes, one per file, each a pure function from a lane graph (or a program) to a new one.

``recurrent.compile`` runs them in order: lower -> split_states -> constant_lanes -> inline_idents -> cse ->
dead_lanes -> schedule. Every pass preserves the program's output at every token (tested one by one against
``recurrent.ir.evaluate`` and the interpreter). ``diagonal`` is a chain-to-chain pass after them, run by the
targets that host only diagonal recurrences (Mamba, Hawk/Griffin).
"""
