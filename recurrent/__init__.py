"""LSRL: programs that compile to the weights of fully recurrent models."""
