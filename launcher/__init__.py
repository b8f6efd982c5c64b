"""cpt-launch: continual pretraining of Llama-3.1-8B on Japanese text with NeMo 2, launched in one command."""

__version__ = "0.1.0"
