"""Target architectures a compiled chain is emitted to (``linear_rnn``: the paper's linear RNN with gated MLPs)."""
