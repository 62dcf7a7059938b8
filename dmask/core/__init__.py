"""numpy only: the mathematics of masked ridge regression and its planning."""
