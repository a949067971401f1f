"""Models: the block vocabulary of conf/model/ -> an nn.Module, and its summary table."""
