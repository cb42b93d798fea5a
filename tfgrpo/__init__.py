"""tfgrpo: Training-Free GRPO (Cai et al., arXiv 2510.08191) as LangGraph graphs."""

__version__ = "0.1.0"
