"""Prompt-space tools: placeholder layout, vector injection and embedding files."""
from .prompt import PromptRows, prompt_rows
from .embedding_file import load_embedding, save_embedding

__all__ = ["PromptRows", "prompt_rows", "load_embedding", "save_embedding"]
