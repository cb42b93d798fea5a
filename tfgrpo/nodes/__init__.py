"""One module per step of Training-Free GRPO, each with its prompt beside it."""
