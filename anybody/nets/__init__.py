"""Pure-torch networks whose parameter names match the official weight files, each with a checked loader."""
